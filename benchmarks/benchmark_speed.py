"""Speed-ups of SyncDreamer on CPU, each next to its quality cost, in one run.

Rows: the teacher at its default steps and guidance (3 transformer passes per step); the teacher with diffusers'
`FirstBlockCacheConfig` and `TaylorSeerCacheConfig` at two settings each; the teacher at each of `--student_steps`
with guidance off (one pass per step WITHOUT distillation: the baseline the student must beat); the distilled
student (one pass per step) at each of `--student_steps`. Per row: the synthetic benchmark (`run_synthetic_benchmark`:
lip-sync r, identity colour error, instructed motions detected, on the same held-out clips and seed for every row) at
1 torch thread; then one `--timing_seconds` clip through `pipe.stream` at every `--threads` count: wall seconds per
generated second, the speed-up over the teacher at the same thread count, and the seconds to the first frames.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_speed.py --teacher pipelines/syncdreamer-tiny \
        --student pipelines/syncdreamer-tiny-fast --threads 1 2 --output speed.json

The pipeline resets the cache hooks' state at the start of every window (each window starts again at t = 1000).
"""

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FPS = 25.0


def cache_rows() -> list[tuple[str, object]]:
    """(label, diffusers cache config) of the cache-hook rows: First-Block Cache at two thresholds (the first block's
    residual change under which the other blocks are skipped), TaylorSeer at two intervals (whole blocks computed
    every `cache_interval` steps after 2 full ones, first-order Taylor extrapolation in between)."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    taylor = {
        "disable_cache_before_step": 2,
        "cache_identifiers": [r"blocks\.\d+"],
        "taylor_factors_dtype": torch.float32,
    }
    return [
        ("FirstBlockCache threshold 0.05", FirstBlockCacheConfig(threshold=0.05)),
        ("FirstBlockCache threshold 0.2", FirstBlockCacheConfig(threshold=0.2)),
        ("TaylorSeer interval 2", TaylorSeerCacheConfig(cache_interval=2, **taylor)),
        ("TaylorSeer interval 3", TaylorSeerCacheConfig(cache_interval=3, **taylor)),
    ]


def plan_rows(args) -> list[dict]:
    """Every row: label, model, sampling options, cache config, transformer passes per step."""
    from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

    teacher = SyncDreamerPipeline.load_config(args.teacher)
    steps = teacher.get("default_num_inference_steps", 40)
    guided = {
        "num_inference_steps": steps,
        "guidance_scale": teacher.get("default_guidance_scale", 5.0),
        "audio_guidance_scale": teacher.get("default_audio_guidance_scale", 4.0),
    }
    passes = 1 + (guided["guidance_scale"] > 1) + (guided["audio_guidance_scale"] > 1)
    rows = [{"label": f"teacher, {steps} steps", "model": args.teacher, "options": guided, "passes": passes}]
    rows += [
        {"label": f"teacher + {label}", "model": args.teacher, "options": guided, "cache": config, "passes": passes}
        for label, config in cache_rows()
    ]
    rows += [
        {
            "label": f"teacher, {n} step{'s' * (n > 1)}, no guidance (not distilled)",
            "model": args.teacher,
            "options": {"num_inference_steps": n, "guidance_scale": 1.0, "audio_guidance_scale": 1.0},
            "passes": 1,
        }
        for n in args.student_steps
    ]
    if args.student:
        rows += [
            {
                "label": f"student, {n} step{'s' * (n > 1)}",
                "model": args.student,
                "options": {"num_inference_steps": n, "guidance_scale": 1.0, "audio_guidance_scale": 1.0},
                "passes": 1,
            }
            for n in args.student_steps
        ]
    return rows


def make_generate(pipe, row: dict, size: int, seed: int):
    """`generate(image, audio, prompt) -> (F, H, W, 3) uint8` with the row's sampling options."""

    def generate(image, audio, prompt):
        output = pipe(
            image=image,
            audio=audio,
            sample_rate=16000,
            prompt=prompt,
            fps=FPS,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(seed),
            **row["options"],
        )
        return (np.asarray(output.frames[0]) * 255).round().astype(np.uint8)

    return generate


def time_stream(pipe, row: dict, case, seconds: float, size: int, seed: int) -> tuple[float, float]:
    """`pipe.stream` over one clip of `seconds` (after a 1-window warm-up): (wall seconds per generated second, wall
    seconds to the first window's frames)."""
    arguments = {
        "image": case.image,
        "sample_rate": 16000,
        "prompt": case.prompt,
        "fps": FPS,
        "height": size,
        "width": size,
        **row["options"],
    }
    pipe(audio=case.audio[: int(0.4 * 16000)], **arguments)
    audio = np.resize(case.audio, round(seconds * 16000)).astype(np.float32)
    start, first, num_frames = time.perf_counter(), None, 0
    for window in pipe.stream(audio=audio, generator=torch.Generator().manual_seed(seed), **arguments):
        first = first or time.perf_counter() - start
        num_frames += window.frames.shape[1]
    return (time.perf_counter() - start) / (num_frames / FPS), first


def run_row(row: dict, args) -> dict:
    from syncdreamer_hf.evaluation.benchmark import make_benchmark_cases, run_synthetic_benchmark
    from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

    pipe = SyncDreamerPipeline.from_pretrained(row["model"])
    pipe.set_progress_bar_config(disable=True)
    if row.get("cache") is not None:
        pipe.transformer.enable_cache(row["cache"])
    generate = make_generate(pipe, row, args.size, args.seed)
    torch.set_num_threads(1)
    quality = {}
    if args.clips:
        quality = run_synthetic_benchmark(
            generate,
            n_clips=args.clips,
            seconds=args.seconds,
            fps=FPS,
            height=args.size,
            width=args.size,
            seed=args.seed,
            swapped_audio=args.swapped_audio,
        )
    case = make_benchmark_cases(1, args.timing_seconds, FPS, args.size, args.size, args.seed)[0]
    timing, first_frames = {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        timing[threads], first_frames[threads] = time_stream(pipe, row, case, args.timing_seconds, args.size, args.seed)
    torch.set_num_threads(1)
    keys = ("lip_sync_r", "swapped_audio_r", "identity_colour_error", "instruction_recall", "no_unasked_motion")
    return {
        "label": row["label"],
        "model": row["model"],
        "options": row["options"],
        "cache": repr(row.get("cache")) if row.get("cache") is not None else None,
        "passes_per_step": row["passes"],
        **{key: quality.get(key) for key in keys},
        "seconds_per_generated_second": {str(n): round(s, 3) for n, s in timing.items()},
        "seconds_to_first_frames": {str(n): round(s, 3) for n, s in first_frames.items()},
    }


def format_table(results: list[dict], threads: list[int]) -> str:
    teacher = results[0]
    header = ["row", "passes/step", "lip-sync r", "colour err /255", "instructions"]
    header += [f"s per gen. s, {n} thread{'s' * (n > 1)}" for n in threads] + [f"speed-up, {n}t" for n in threads]
    header += [f"first frames s, {n}t" for n in threads]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        seconds = row["seconds_per_generated_second"]
        recall = row["instruction_recall"]
        cells = [
            row["label"],
            str(row["passes_per_step"]),
            "n/a" if row["lip_sync_r"] is None else f"{row['lip_sync_r']:.3f}",
            "n/a" if row["identity_colour_error"] is None else f"{row['identity_colour_error'] * 255:.1f}",
            "n/a" if recall is None else f"{recall:.0%}",
        ]
        cells += [f"{seconds[str(n)]:.3f}" for n in threads]
        cells += [f"{teacher['seconds_per_generated_second'][str(n)] / seconds[str(n)]:.2f}x" for n in threads]
        cells += [f"{row['seconds_to_first_frames'][str(n)]:.2f}" for n in threads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pipelines/syncdreamer-tiny")
    parser.add_argument("--student", default="pipelines/syncdreamer-tiny-fast", help="'' to leave the student rows out")
    parser.add_argument("--student_steps", type=int, nargs="+", default=[4, 2, 1])
    parser.add_argument("--clips", type=int, default=4, help="held-out clips of the quality benchmark (0: timing only)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per clip")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swapped_audio", action="store_true", help="also score each clip with another's audio")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the timing runs")
    parser.add_argument("--timing_seconds", type=float, default=4.0, help="length of the timed clip")
    parser.add_argument("--rows", nargs="+", default=None, help="only the rows whose label contains one of these")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    rows = plan_rows(args)  # the first row (the teacher) is the reference of the speed-ups: always run
    rows = rows[:1] + [row for row in rows[1:] if args.rows is None or any(text in row["label"] for text in args.rows)]
    print(
        f"CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; quality at 1 torch thread, "
        f"{args.clips} clips x {args.seconds:g} s; timing: one {args.timing_seconds:g}-s clip at {args.threads} threads",
        flush=True,
    )
    results = []
    for row in rows:
        start = time.perf_counter()
        results.append(run_row(row, args))
        print(json.dumps({**results[-1], "row_wall_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    load_at_end = os.getloadavg()[0]
    print(f"\nload average {load_at_end:.1f} at the end")
    print(format_table(results, args.threads))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": vars(args), "load_average_at_end": load_at_end, "rows": results}, handle, indent=2)


if __name__ == "__main__":
    main()
