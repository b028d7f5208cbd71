#!/usr/bin/env python
"""SyncDreamer-Tiny ablation: one table, every row trained with the same budget and scored by the same benchmark.

Run it after `build_syncdreamer_tiny.py` (it reuses that build's initial pipeline, latent cache and training
settings):

    OMP_NUM_THREADS=1 python training_scripts/ablate.py --build_dir outputs/syncdreamer_tiny/run \
        --work_dir outputs/ablation --max_train_steps 400

Trained rows (each from the build's initial pipeline, `--max_train_steps` steps, the build's settings, once per
`--seeds` seed: the table gives the mean and the range over seeds):

- `full`: the model as built;
- `no_reference_sink`: windows without the reference sink, in training and in the row's pipeline config;
- `no_motion_noise`: `--motion_noise_max_sigma 0` (clean motion latents in training);
- `no_localization_loss`: `--lambda_loc 0`;
- `no_audio_dynamics`: the audio dynamics encoder with `use_expressivity=False` (w_t = 1);
- `no_visual_adapter`: the visual adapter with `raw_image_tokens=True` (the image tokens, projected; no queries,
  so no localization loss either).

Inference rows, on the `full` model: `--num-inference-steps` 8 / 20 / 50, and the prompt: every clip prompted
with the minimal `"talk to the camera"` instead of its instruction prompt (what a prompt enhancer should write:
the short instruction grounded in the clip). Each row is `syncdreamer evaluate synthetic` on the same held-out
clips; the rows' JSON files, commands and the Markdown table go to `--work_dir`. Rerunning the command skips
every row whose results exist.
"""

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import build_syncdreamer_tiny as build

MINIMAL_PROMPT = "talk to the camera"
CARD_HEADING = "## Ablation"
# row -> changed training flags, `component`: (a component of the initial pipeline to rebuild, its config changes),
# `pipeline_config`: changes to the initial pipeline's own config
TRAINED_ROWS = {
    "full": {},
    "no_reference_sink": {"reference_sink": False, "pipeline_config": {"reference_sink": False}},
    "no_motion_noise": {"motion_noise_max_sigma": 0.0},
    "no_localization_loss": {"lambda_loc": 0.0},
    "no_audio_dynamics": {"component": ("audio_dynamics_encoder", {"use_expressivity": False})},
    "no_visual_adapter": {"component": ("visual_adapter", {"raw_image_tokens": True})},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build_dir", required=True, help="the --work_dir of a finished build_syncdreamer_tiny.py")
    parser.add_argument("--work_dir", default="outputs/ablation")
    parser.add_argument("--max_train_steps", type=int, default=400, help="the training budget of every row")
    parser.add_argument("--rows", nargs="+", default=None,
                        help=f"trained rows to run (default: all of {list(TRAINED_ROWS)}) and the inference rows")
    parser.add_argument("--inference_steps", type=int, nargs="*", default=[8, 20, 50])
    parser.add_argument("--eval_clips", type=int, default=4)
    parser.add_argument("--eval_seconds", type=float, default=2.0)
    parser.add_argument("--eval_steps", type=int, default=10, help="inference steps of the trained rows")
    parser.add_argument("--no_swapped_audio", dest="swapped_audio", action="store_false",
                        help="score without the swapped-audio pass (half the time)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train and score every trained row once per seed (default: the build's seed)")
    parser.add_argument("--card", default=None,
                        help="a model card (README.md) whose `## Ablation` section is (re)written with the table")
    return parser.parse_args(argv)


def variant_pipeline(init_dir: Path, row_dir: Path, spec: dict, seed: int) -> Path:
    """A copy of the initial pipeline for a row: its `component` (name, config changes) rebuilt with a fresh random
    init, and/or `pipeline_config` changes to its own config (`model_index.json`)."""
    import torch

    from syncdreamer_hf import AudioDynamicsEncoder, SyncDreamerVisualAdapter

    target = row_dir / "init_pipeline"
    if (target / "model_index.json").is_file():
        return target
    temporary = target.with_name(target.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(init_dir, temporary)
    if "component" in spec:
        component, changes = spec["component"]
        classes = {"audio_dynamics_encoder": AudioDynamicsEncoder, "visual_adapter": SyncDreamerVisualAdapter}
        torch.manual_seed(seed)
        module = classes[component].from_config(classes[component].load_config(init_dir / component), **changes)
        shutil.rmtree(temporary / component)
        module.save_pretrained(temporary / component)
    if "pipeline_config" in spec:
        index = json.loads((temporary / "model_index.json").read_text())
        (temporary / "model_index.json").write_text(json.dumps({**index, **spec["pipeline_config"]}, indent=2))
    temporary.rename(target)
    return target


def train_row(name: str, spec: dict, build_args, init_dir: Path, cache_dir: Path, row_dir: Path, steps: int) -> dict:
    run_dir = row_dir / "train"
    if "component" in spec or "pipeline_config" in spec:
        init_dir = variant_pipeline(init_dir, row_dir, spec, seed=build_args.seed)
    flags = {k: v for k, v in spec.items() if k not in ("component", "pipeline_config")}
    row_args = argparse.Namespace(**{**vars(build_args), **flags, "max_train_steps": steps})  # the row's schedule
    command = build.train_command(row_args, init_dir, cache_dir, run_dir, steps)
    if build.latest_step(run_dir) < steps or not (run_dir / "model_index.json").is_file():
        build.log(f"ablation row {name}: training {steps} steps")
        build.run(command)
    return {"train_command": build.shown(command), "model": str(run_dir)}


def evaluate_row(name: str, model_dir: Path, output: Path, args, build_args, steps: int, prompt=None) -> dict:
    command = build.evaluate_command(model_dir, output, args.eval_clips, args.eval_seconds, steps, build_args, prompt,
                                     args.swapped_audio)
    result = build.evaluate(command, output, rerun=False)
    del result["wall_seconds"]  # 0 when the row was already scored: not part of the table
    return {"row": name, "eval_command": result.pop("command"), **result}


TABLE_METRICS = (  # (key, scale, format): the table's columns after the row name
    ("lip_sync_r", 1, "{:.3f}"), ("swapped_audio_r", 1, "{:.3f}"), ("identity_colour_error", 255, "{:.1f}"),
    ("identity_colour_drift", 255, "{:+.1f}"), ("identity_colour_slope_per_second", 255, "{:+.2f}"),
    ("instruction_recall", 100, "{:.0f}%"), ("no_unasked_motion", 100, "{:.0f}%"),
    ("seconds_per_generated_second", 1, "{:.2f}"),
)


def spread_cell(values: list, scale: float, fmt: str) -> str:
    """One metric over a row's seeds: the value, or the mean and the range (min..max) over several seeds."""
    values = [value * scale for value in values if value is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    mean = sum(values) / len(values)
    return f"{fmt.format(mean)} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def markdown_table(rows: list[dict], args, build_args) -> str:
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        f"Every trained row: {args.max_train_steps} steps from the same initial pipeline and cache, seed(s) "
        f"{', '.join(map(str, seeds))} (several seeds: mean and range); every row scored on the same "
        f"{args.eval_clips} held-out clips x {args.eval_seconds:g} s (guidance: text {build_args.guidance_scale:g}, "
        f"audio {build_args.audio_guidance_scale:g}).",
        "",
        "| row | lip-sync r | swapped r | colour err /255 | drift /255 | slope /255 per s | instructions "
        "| no unasked motion | s / gen. s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(row["row"] for row in rows))
    for name in names:
        group = [row for row in rows if row["row"] == name]
        cells = [spread_cell([row.get(key) for row in group], scale, fmt) for key, scale, fmt in TABLE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Commands (training, then scoring):", ""]
    lines += [f"- {row['row']} (seed {row['seed']}): "
              + (f"`{row['train_command']}`; " if "train_command" in row else "the full row's model; ")
              + f"`{row['eval_command']}`" for row in rows]
    return "\n".join(lines)


def write_card_section(card: Path, table: str, command: str) -> None:
    """Replaces the card's `## Ablation` section (from its heading to the end) with the table and its command."""
    text = card.read_text(encoding="utf-8")
    text = text.split(CARD_HEADING)[0].rstrip("\n")
    card.write_text(f"{text}\n\n{CARD_HEADING}\n\n`OMP_NUM_THREADS=1 {command}`\n\n{table}\n", encoding="utf-8")


def main(argv=None):
    args = parse_args(argv)
    build_dir, work_dir = Path(args.build_dir), Path(args.work_dir)
    state = json.loads((build_dir / "build_state.json").read_text())
    build_args = argparse.Namespace(**{**vars(build.parse_args([])), **state["args"]})  # newer options: defaults
    init_dir, cache_dir = build_dir / "init_pipeline", build_dir / "cache"
    selected = args.rows or list(TRAINED_ROWS)
    unknown = sorted(set(selected) - set(TRAINED_ROWS))
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {list(TRAINED_ROWS)}")

    rows = []
    seeds = args.seeds or [build_args.seed]
    for name in selected:
        for seed in seeds:
            # one seed: the folder of earlier one-seed runs
            row_dir = work_dir / (name if args.seeds is None else f"{name}-seed{seed}")
            seeded = argparse.Namespace(**{**vars(build_args), "seed": seed})
            trained = train_row(name, TRAINED_ROWS[name], seeded, init_dir, cache_dir, row_dir, args.max_train_steps)
            model = Path(trained["model"])
            row = evaluate_row(name, model, row_dir / "eval.json", args, build_args, args.eval_steps)
            rows.append({**row, **trained, "seed": seed})
            if name != "full":
                continue
            for steps in args.inference_steps:
                rows.append({**evaluate_row(f"full, {steps} inference steps", model,
                                            row_dir / f"eval_steps{steps}.json", args, build_args, steps),
                             "model": trained["model"], "seed": seed})
            rows.append({**evaluate_row(f'full, minimal prompt "{MINIMAL_PROMPT}"', model,
                                        row_dir / "eval_minimal_prompt.json", args, build_args, args.eval_steps,
                                        MINIMAL_PROMPT), "model": trained["model"], "seed": seed})
    (work_dir / "ablation.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(rows, args, build_args)
    (work_dir / "ablation.md").write_text(table + "\n")
    if args.card:
        used = sys.argv[1:] if argv is None else argv
        write_card_section(Path(args.card), table, shlex.join(["python", "training_scripts/ablate.py", *used]))
    print(table)
    return rows


if __name__ == "__main__":
    main()
