"""The `syncdreamer` command: `syncdreamer generate --image IMG --audio AUDIO --prompt TEXT --output OUT.mp4`.

One function per subcommand (`generate` here; `preprocess` and `evaluate` are added beside it), each taking the
parsed arguments. A user error (bad file, bad size, unknown model) prints one line on stderr and exits with
status 2; it never shows a traceback.
"""

import argparse
import sys
from pathlib import Path

from .data.preprocess import add_parser as add_preprocess_parser

# SyncDreamer-Tiny, trained on the synthetic avatar world (in the repository checkout, next to `src/`).
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "pipelines" / "syncdreamer-tiny"
DTYPES = ("float32", "bfloat16", "float16")


class UserError(Exception):
    """An error in what the user asked for: reported as one line, exit status 2."""


def load_pipeline(model: str, device: str, dtype: str, prompt_enhancer: str | None = None):
    import diffusers
    import torch
    import transformers

    from .pipeline_syncdreamer import SyncDreamerPipeline

    diffusers.utils.logging.disable_progress_bar()  # loading bars; the denoising bar stays
    transformers.utils.logging.disable_progress_bar()

    looks_like_repo_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not Path(model).expanduser().is_dir() and not looks_like_repo_id:
        raise UserError(f"model {model!r} not found: pass a pipeline folder or a Hub repo id (owner/name).")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    components = {}
    try:
        if prompt_enhancer is not None:
            from .prompt_enhancer import SyncDreamerPromptEnhancer

            components["prompt_enhancer"] = SyncDreamerPromptEnhancer.from_pretrained(prompt_enhancer)
        pipe = SyncDreamerPipeline.from_pretrained(
            str(Path(model).expanduser()), dtype=getattr(torch, dtype), **components
        )
    except (OSError, ValueError) as error:
        raise UserError(f"could not load model {model!r}: {str(error).splitlines()[0]}") from None
    return pipe.to(device)


def generate(args: argparse.Namespace) -> None:
    """Runs the pipeline on one image + audio + prompt and writes an mp4 with the audio muxed in."""
    import torch

    from .media import save_video

    if not args.output.lower().endswith(".mp4"):
        raise UserError(f"--output must be an .mp4 path; got {args.output!r}.")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.prompt_enhancer)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    options = {
        name: getattr(args, name)
        for name in ("num_inference_steps", "guidance_scale", "audio_guidance_scale", "height", "width", "num_frames")
        if getattr(args, name) is not None
    }
    output = pipe(
        image=args.image,
        audio=args.audio,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        fps=args.fps,
        generator=generator,
        enhance_prompt=args.enhance_prompt,
        **options,
    )
    if args.enhance_prompt:
        print(f"enhanced prompt: {output.prompt[0]}")
    save_video(output.frames[0], args.output, fps=args.fps, audio=output.audio)
    print(f"wrote {args.output}: {len(output.frames[0])} frames at {args.fps:g} fps with audio")


def evaluate_synthetic(args: argparse.Namespace) -> None:
    """Scores a pipeline on held-out clips of the synthetic avatar world; prints a table, writes the JSON."""
    import json

    import numpy as np
    import torch

    from .evaluation.benchmark import format_benchmark_table, run_synthetic_benchmark

    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    options = {
        name: getattr(args, name)
        for name in ("num_inference_steps", "guidance_scale", "audio_guidance_scale")
        if getattr(args, name) is not None
    }

    def generate(image, audio, prompt):
        output = pipe(image=image, audio=audio, sample_rate=16000, prompt=args.prompt or prompt, fps=args.fps, height=args.size,
                      width=args.size, generator=torch.Generator("cpu").manual_seed(args.seed), **options)
        return (np.asarray(output.frames[0]) * 255).round().astype(np.uint8)

    results = run_synthetic_benchmark(generate, n_clips=args.clips, seconds=args.seconds, fps=args.fps,
                                      height=args.size, width=args.size, seed=args.seed)
    results["model"], results["generation"] = args.model, {**options, "seed": args.seed, "prompt": args.prompt}
    print(format_benchmark_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncdreamer", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True)

    gen = subcommands.add_parser("generate", help="image + audio + prompt -> mp4 with the audio muxed in")
    gen.add_argument("--image", required=True, help="reference image (png/jpg/webp, any mode and size)")
    gen.add_argument("--audio", required=True, help="driving audio (wav/mp3/flac/ogg/m4a or a video with audio)")
    gen.add_argument("--prompt", required=True, help="what the avatar does")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--output", required=True, help="the .mp4 to write")
    gen.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder or Hub repo id (default: %(default)s)")
    gen.add_argument("--num-inference-steps", type=int, default=None, help="default: the pipeline's config")
    gen.add_argument("--guidance-scale", type=float, default=None, help="text guidance (default: the pipeline's config)")
    gen.add_argument("--audio-guidance-scale", type=float, default=None, help="audio guidance (default: the pipeline's config)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=float, default=25.0)
    gen.add_argument("--num-frames", type=int, default=None,
                     help="sk+1 frames for the VAE's temporal compression s (4k+1 for Wan; default: the whole audio)")
    gen.add_argument("--height", type=int, default=None, help="multiple of 16 for Wan, 8 for SyncDreamer-Tiny (default: the pipeline's)")
    gen.add_argument("--width", type=int, default=None, help="multiple of 16 for Wan, 8 for SyncDreamer-Tiny (default: the pipeline's)")
    gen.add_argument("--enhance-prompt", action="store_true",
                     help="rewrite the prompt with the pipeline's prompt enhancer (Qwen2-VL) into a motion instruction")
    gen.add_argument("--prompt-enhancer", default=None,
                     help="prompt enhancer folder or Hub id to use instead of the pipeline's own")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    gen.add_argument("--dtype", default="float32", choices=DTYPES)
    gen.set_defaults(run=generate)

    add_preprocess_parser(subcommands)

    evaluate = subcommands.add_parser("evaluate", help="benchmarks")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    synthetic = benchmarks.add_parser(
        "synthetic", help="lip-sync, identity, instruction accuracy on held-out clips of the synthetic avatar world"
    )
    synthetic.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder or Hub repo id")
    synthetic.add_argument("--clips", type=int, default=8, help="held-out clips (default: %(default)s)")
    synthetic.add_argument("--seconds", type=float, default=4.0, help="seconds per clip (default: %(default)s)")
    synthetic.add_argument("--fps", type=float, default=25.0)
    synthetic.add_argument("--size", type=int, default=64, help="frame height and width, multiple of 16 (8 for SyncDreamer-Tiny)")
    synthetic.add_argument("--num-inference-steps", type=int, default=None)
    synthetic.add_argument("--guidance-scale", type=float, default=None)
    synthetic.add_argument("--audio-guidance-scale", type=float, default=None)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--prompt", default=None,
                           help="one prompt for every clip instead of its instruction prompt (ablations)")
    synthetic.add_argument("--output", default=None, help="write the full results as JSON here")
    synthetic.add_argument("--device", default="cpu")
    synthetic.add_argument("--dtype", default="float32", choices=DTYPES)
    synthetic.set_defaults(run=evaluate_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, ValueError, TypeError) as error:
        print(f"syncdreamer {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
