"""Runs `train_syncdreamer.py` under every config of this folder on the GPUs of one machine, the check a CPU cannot do.

    python training_scripts/accelerate_configs/check_on_gpus.py --num_gpus 2     # needs deepspeed for its config

For each config (DDP, FSDP2, DeepSpeed ZeRO-2), full fine-tuning and LoRA, on tiny components: 2 steps with a
checkpoint, then a resumed run to 4 steps with validation, in bf16. Passes when every run ends in a folder the
pipeline loads, with a validation mp4, and FSDP / DeepSpeed end within bf16 noise of DDP. Prints one line per run.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import PIL.Image
import torch
from safetensors.torch import load_file

from syncdreamer_hf import SyncDreamerPipeline
from syncdreamer_hf.data.synthetic import write_clip_dataset
from syncdreamer_hf.media import load_video
from syncdreamer_hf.tiny import save_tiny_training_setup

CONFIGS = Path(__file__).resolve().parent
TRAIN_SCRIPT = CONFIGS.parent / "train_syncdreamer.py"
RUNS = {"ddp": "multi_gpu_ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero2.yaml"}
MODES = {"full": [], "lora": ["--lora_rank", "4"]}


def launch(config: str, num_gpus: int, argv: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / config),
        "--num_processes",
        str(num_gpus),
        "--mixed_precision",
        "bf16",
        str(TRAIN_SCRIPT),
        *argv,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")


def trained_weights(folder: Path) -> dict:
    files = [*folder.glob("*/diffusion_pytorch_model*.safetensors"), *folder.glob("*.safetensors")]
    return {f"{path.parent.name}/{path.name}/{key}": value for path in files for key, value in load_file(path).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    if args.num_gpus < 2:
        raise SystemExit("needs 2 or more GPUs")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pipeline_dir, cache_dir = save_tiny_training_setup(work)
        clip = write_clip_dataset(work / "validation", 1, seconds=0.4, height=32, width=32) / "clip_00000.mp4"
        PIL.Image.fromarray(load_video(clip)[0][0]).save(work / "reference.png")
        failures = []
        for mode, mode_flags in MODES.items():
            reference = None
            for run in args.runs:
                output_dir = work / f"{run}-{mode}"
                common = [
                    "--pretrained_model_name_or_path",
                    str(pipeline_dir),
                    "--cache_dir",
                    str(cache_dir),
                    "--output_dir",
                    str(output_dir),
                    "--report_to",
                    "none",
                    "--checkpointing_steps",
                    "2",
                    "--learning_rate",
                    "1e-3",
                    "--validation_steps",
                    "4",
                    "--validation_image",
                    str(work / "reference.png"),
                    "--validation_audio",
                    str(clip),
                    "--validation_num_frames",
                    "9",
                    "--validation_inference_steps",
                    "2",
                    *mode_flags,
                ]
                try:
                    launch(RUNS[run], args.num_gpus, [*common, "--max_train_steps", "2"])
                    launch(
                        RUNS[run],
                        args.num_gpus,
                        [*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"],
                    )
                    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir if mode == "lora" else output_dir)
                    if mode == "lora":
                        pipe.load_trained_modules(output_dir)
                    assert (output_dir / "validation" / "step-4.mp4").is_file(), "no validation video"
                    weights = trained_weights(output_dir)
                    reference = reference or weights
                    worst = max((weights[k].float() - reference[k].float()).abs().max().item() for k in reference)
                    assert worst < 5e-2, f"differs from {args.runs[0]} by {worst:.3g}"
                    print(f"ok   {run:9s} {mode}: loads, validation written, max |diff| to {args.runs[0]} {worst:.2g}")
                except (RuntimeError, AssertionError, OSError, ValueError) as error:
                    failures.append(run)
                    print(f"FAIL {run:9s} {mode}: {str(error)[-2000:]}")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
