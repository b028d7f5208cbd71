"""The `syncdreamer` command: `syncdreamer generate --image IMG --audio AUDIO --prompt TEXT --output OUT.mp4`.

One function per subcommand (`generate` here; `preprocess` and `evaluate` are added beside it), each taking the
parsed arguments. A user error (bad file, bad size, unknown model) prints one line on stderr and exits with
status 2; it never shows a traceback.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from .data.preprocess import add_parser as add_preprocess_parser

# The model used without --model, in this order: the folder or Hub id in $SYNCDREAMER_MODEL, else the bundled
# SyncDreamer-Tiny (trained on the synthetic avatar world): package data in a wheel install (setup.py copies it
# there), the checkout's `pipelines/syncdreamer-tiny` in an editable install.
MODEL_ENV_VAR = "SYNCDREAMER_MODEL"
_PACKAGED_MODEL = Path(__file__).resolve().parent / "pipelines" / "syncdreamer-tiny"
_CHECKOUT_MODEL = Path(__file__).resolve().parents[2] / "pipelines" / "syncdreamer-tiny"
DEFAULT_MODEL = _PACKAGED_MODEL if _PACKAGED_MODEL.is_dir() else _CHECKOUT_MODEL
MODEL_HELP = f"pipeline folder or Hub repo id (default: ${MODEL_ENV_VAR} when set, else the bundled SyncDreamer-Tiny)"
DTYPES = ("float32", "bfloat16", "float16")
# pipeline arguments the commands pass on when given (default: the pipeline's config)
SAMPLING_OPTIONS = (
    "num_inference_steps", "guidance_scale", "audio_guidance_scale", "guidance_end", "mirrored_negative_prompt"
)


def add_sampling_arguments(parser) -> None:
    """`--num-inference-steps`, `--guidance-scale`, `--audio-guidance-scale`, `--guidance-end`,
    `--[no-]mirrored-negative-prompt` (`SAMPLING_OPTIONS`)."""
    default = " (default: the pipeline's config)"
    parser.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps per window" + default)
    parser.add_argument("--guidance-scale", type=float, default=None, help="text guidance" + default)
    parser.add_argument("--audio-guidance-scale", type=float, default=None, help="audio guidance" + default)
    parser.add_argument("--guidance-end", type=float, default=None,
                        help="fraction of each window's steps, from the noisiest, with text guidance" + default)
    parser.add_argument("--mirrored-negative-prompt", action=argparse.BooleanOptionalAction, default=None,
                        help="guide a prompt that names a side away from the same prompt with left and right "
                        "exchanged" + default)


class UserError(Exception):
    """An error in what the user asked for: reported as one line, exit status 2."""


def looks_like_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def check_device(device) -> None:
    """Raises a `UserError` unless torch can put tensors on `device` (a `torch.device`) on this machine."""
    import torch

    if device.type == "meta":
        raise UserError("--device meta holds no data, so it cannot generate anything; use --device cpu or cuda.")
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device {device}: {reason}; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}."
        )
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, NotImplementedError, ImportError) as error:  # each backend its own way
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise UserError(f"--device {device} is not usable on this machine ({reason}); use --device cpu.") from None


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:  # torch.Generator.manual_seed takes 64 bits; numpy's generators no negative seed
        raise UserError(f"--seed must be an integer from 0 to 2**64 - 1 (18446744073709551615); got {seed}.")


def check_positive_number(flag: str, value: float) -> None:
    from .media import require_finite

    require_finite(flag, value)
    if value <= 0:
        raise UserError(f"{flag} must be positive; got {value:g}.")


def default_model() -> str:
    """The model of a command run without --model (see `DEFAULT_MODEL`)."""
    return os.environ.get(MODEL_ENV_VAR) or str(DEFAULT_MODEL)


def load_pipeline(model: str | None, device: str, dtype: str, prompt_enhancer: str | None = None):
    import diffusers
    import torch
    import transformers

    from .pipeline_syncdreamer import SyncDreamerPipeline

    diffusers.utils.logging.disable_progress_bar()  # loading bars; the denoising bar stays
    transformers.utils.logging.disable_progress_bar()

    source = "" if model else f" (from ${MODEL_ENV_VAR})" if os.environ.get(MODEL_ENV_VAR) else " (the bundled default)"
    model = model or default_model()
    if not Path(model).expanduser().is_dir() and not looks_like_repo_id(model):
        raise UserError(f"model {model!r}{source} not found: pass a pipeline folder or a Hub repo id (owner/name).")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    check_device(device)
    components = {}
    if prompt_enhancer is not None:
        from .prompt_enhancer import SyncDreamerPromptEnhancer

        if not Path(prompt_enhancer).expanduser().is_dir() and not looks_like_repo_id(prompt_enhancer):
            raise UserError(
                f"--prompt-enhancer {prompt_enhancer!r} not found: pass a prompt-enhancer folder or a Hub repo id "
                "(owner/name)."
            )
        try:
            components["prompt_enhancer"] = SyncDreamerPromptEnhancer.from_pretrained(prompt_enhancer)
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0]
            raise UserError(f"could not load --prompt-enhancer {prompt_enhancer!r}: {reason}") from None
    try:
        pipe = SyncDreamerPipeline.from_pretrained(
            str(Path(model).expanduser()), dtype=getattr(torch, dtype), **components
        )
    except (OSError, ValueError) as error:
        raise UserError(f"could not load model {model!r}: {str(error).splitlines()[0]}") from None
    return pipe.to(device)


def generate(args: argparse.Namespace) -> None:
    """Runs the pipeline on one image + audio + prompt and writes an mp4 with the audio muxed in."""
    import torch

    from .atomic import check_output_file
    from .media import VideoWriter, save_video

    if not args.output.lower().endswith(".mp4"):
        raise UserError(f"--output must be an .mp4 path; got {args.output!r}.")
    check_output_file(args.output, "--output")  # before the generation, not after it
    check_seed(args.seed)
    check_positive_number("--fps", args.fps)
    pipe = load_pipeline(args.model, args.device, args.dtype, args.prompt_enhancer)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    options = {
        name: getattr(args, name)
        for name in (*SAMPLING_OPTIONS, "height", "width", "num_frames")
        if getattr(args, name) is not None
    }
    inputs = {"image": args.image, "audio": args.audio, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
              "fps": args.fps, "generator": generator, "enhance_prompt": args.enhance_prompt, **options}
    if not args.stream:
        output = pipe(**inputs)
        if args.enhance_prompt:
            print(f"enhanced prompt: {output.prompt[0]}")
        save_video(output.frames[0], args.output, fps=args.fps, audio=output.audio)
        print(f"wrote {args.output}: {len(output.frames[0])} frames at {args.fps:g} fps with audio")
        return

    # window by window: each window's frames and audio go into the mp4 as soon as the window is denoised
    start, first_frames = time.perf_counter(), None
    with VideoWriter(args.output, fps=args.fps) as writer:
        for window in pipe.stream(**inputs):
            writer.write(window.frames[0], window.audio)
            if first_frames is None:
                first_frames = time.perf_counter() - start
                if args.enhance_prompt:
                    print(f"enhanced prompt: {window.prompt[0]}")
                print(f"first frames after {first_frames:.2f} s", flush=True)
    wall = time.perf_counter() - start
    video_seconds = writer.num_frames / args.fps
    print(f"wrote {args.output}: {writer.num_frames} frames at {args.fps:g} fps with audio; time to first frame "
          f"{first_frames:.2f} s, {wall:.2f} s for {video_seconds:.2f} s of video: real-time factor "
          f"{wall / video_seconds:.2f} (wall s per video s; <= 1 is real time)")


def evaluate_synthetic(args: argparse.Namespace) -> None:
    """Scores a pipeline on held-out clips of the synthetic avatar world; prints a table, writes the JSON."""
    import json

    import numpy as np
    import torch

    from .atomic import atomic_write_text, check_output_file
    from .evaluation.benchmark import format_benchmark_table, run_synthetic_benchmark
    from .media import load_audio

    if args.output:
        check_output_file(args.output, "--output")
    check_seed(args.seed)
    check_positive_number("--seconds", args.seconds)
    check_positive_number("--fps", args.fps)
    if args.clips < 1:
        raise UserError(f"--clips must be at least 1; got {args.clips}.")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.prompt_enhancer)
    pipe.set_progress_bar_config(disable=True)
    if args.enhance_prompt and pipe.prompt_enhancer is None:
        raise UserError("--enhance-prompt needs a prompt enhancer: pass --prompt-enhancer PATH, or a --model whose "
                        "folder has a prompt_enhancer/ component.")
    options = {
        name: getattr(args, name)
        for name in SAMPLING_OPTIONS
        if getattr(args, name) is not None
    }
    enhanced = {}  # (image bytes, prompt) -> the enhancer's instruction: once per clip, as `enhance_prompt=True` would

    def generate(image, audio, prompt):
        prompt = args.prompt or prompt
        if args.enhance_prompt:
            key = (image.tobytes(), prompt)
            if key not in enhanced:
                enhanced[key] = pipe.prompt_enhancer.enhance(image, prompt)
            prompt = enhanced[key]
        output = pipe(image=image, audio=audio, sample_rate=16000, prompt=prompt, fps=args.fps, height=args.size,
                      width=args.size, generator=torch.Generator("cpu").manual_seed(args.seed), **options)
        return (np.asarray(output.frames[0]) * 255).round().astype(np.uint8)

    results = run_synthetic_benchmark(generate, n_clips=args.clips, seconds=args.seconds, fps=args.fps,
                                      height=args.size, width=args.size, seed=args.seed,
                                      swapped_audio=args.swapped_audio, user_prompts=args.user_prompts,
                                      speech=[load_audio(path) for path in args.speech] if args.speech else None)
    results["model"], results["generation"] = pipe.name_or_path, {**options, "seed": args.seed, "prompt": args.prompt}
    if args.enhance_prompt:
        for clip, instruction in zip(results["clips"], enhanced.values()):  # one entry per clip, in clip order
            clip["enhanced_prompt"] = instruction
    print(format_benchmark_table(results))
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=2))
        print(f"wrote {args.output}")


def demo(args: argparse.Namespace) -> None:
    """Serves the Gradio demo (image + audio + prompt -> video) on http://HOST:PORT until interrupted."""
    try:
        from .demo import build_demo
    except ImportError:
        raise UserError("the demo needs gradio: pip install 'syncdreamer_hf[demo]'") from None
    pipe = load_pipeline(args.model, args.device, args.dtype, args.prompt_enhancer)
    build_demo(pipe).launch(server_name=args.host, server_port=args.port, share=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncdreamer", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True)

    gen = subcommands.add_parser("generate", help="image + audio + prompt -> mp4 with the audio muxed in")
    gen.add_argument("--image", required=True, help="reference image (png/jpg/webp, any mode and size)")
    gen.add_argument("--audio", required=True, help="driving audio (wav/mp3/flac/ogg/m4a or a video with audio)")
    gen.add_argument("--prompt", required=True, help="what the avatar does")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--output", required=True, help="the .mp4 to write")
    gen.add_argument("--model", default=None, help=MODEL_HELP)
    add_sampling_arguments(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=float, default=25.0)
    gen.add_argument("--num-frames", type=int, default=None,
                     help="sk+1 frames for the VAE's temporal compression s (4k+1 for Wan; default: the whole audio)")
    gen.add_argument("--height", type=int, default=None, help="multiple of 16 for Wan, 8 for SyncDreamer-Tiny (default: the pipeline's)")
    gen.add_argument("--width", type=int, default=None, help="multiple of 16 for Wan, 8 for SyncDreamer-Tiny (default: the pipeline's)")
    gen.add_argument("--stream", action="store_true",
                     help="write the mp4 window by window as the windows are denoised (memory bounded by a window); "
                          "prints the time to the first frames and the real-time factor")
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
    synthetic.add_argument("--model", default=None, help=MODEL_HELP)
    synthetic.add_argument("--clips", type=int, default=8, help="held-out clips (default: %(default)s)")
    synthetic.add_argument("--seconds", type=float, default=4.0, help="seconds per clip (default: %(default)s)")
    synthetic.add_argument("--fps", type=float, default=25.0)
    synthetic.add_argument("--size", type=int, default=64, help="frame height and width, multiple of 16 (8 for SyncDreamer-Tiny)")
    add_sampling_arguments(synthetic)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--prompt", default=None,
                           help="one prompt for every clip instead of its instruction prompt (ablations)")
    synthetic.add_argument("--speech", nargs="+", default=None, metavar="AUDIO",
                           help="recordings (any format PyAV reads) that drive the clips instead of the world's "
                                "synthetic speech: speech the model never trained on")
    synthetic.add_argument("--user-prompts", action="store_true",
                           help="prompt each clip with a held-out user-style prompt meaning its instructions "
                                "(\"say hi to everyone\") instead of the world's exact instruction phrase")
    synthetic.add_argument("--enhance-prompt", action="store_true",
                           help="rewrite each clip's prompt with the prompt enhancer (greedy) before generating")
    synthetic.add_argument("--prompt-enhancer", default=None,
                           help="prompt enhancer folder or Hub id to use instead of the pipeline's own")
    synthetic.add_argument("--no-swapped-audio", dest="swapped_audio", action="store_false",
                           help="skip the swapped-audio pass (half the time; long drift runs)")
    synthetic.add_argument("--output", default=None, help="write the full results as JSON here")
    synthetic.add_argument("--device", default="cpu")
    synthetic.add_argument("--dtype", default="float32", choices=DTYPES)
    synthetic.set_defaults(run=evaluate_synthetic)

    web = subcommands.add_parser("demo", help="a Gradio web demo: upload an image and audio, type a prompt, watch")
    web.add_argument("--model", default=None, help=MODEL_HELP)
    web.add_argument("--prompt-enhancer", default=None, help="prompt enhancer folder or Hub id (enables the checkbox)")
    web.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (default: %(default)s)")
    web.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    web.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    web.add_argument("--dtype", default="float32", choices=DTYPES)
    web.set_defaults(run=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, ValueError, TypeError, OSError) as error:  # OSError: a write failed (e.g. a full disk)
        message = " ".join(str(error).splitlines())
        print(f"syncdreamer {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
