"""Peak memory (RSS) of `training_scripts/train_syncdreamer.py` on CPU, per precision / LoRA / checkpointing setting.

Builds a pipeline folder (the tiny random components with a transformer of the chosen size) and the latent cache of
synthetic clips (`syncdreamer_hf.tiny.save_tiny_training_setup`), then runs 2 training steps per setting in a fresh
process and reads that process's peak resident memory (`os.wait4`). A Markdown table goes to stdout and JSON to `--output`.

    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --size tiny
    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --size mid --output mid.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from syncdreamer_hf import SyncDreamerTransformer3DModel

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_syncdreamer.py"

# transformer config overrides of the tiny pipeline, and the video size of the clips
SIZES = {
    "tiny": {"transformer": None, "height": 32, "width": 32, "num_frames": 9},
    "mid": {
        "transformer": {
            "num_attention_heads": 8,
            "attention_head_dim": 128,
            "ffn_dim": 4096,
            "num_layers": 6,
            "freq_dim": 256,
            "rope_max_seq_len": 1024,
        },
        "height": 256,
        "width": 256,
        "num_frames": 17,
    },
}
SETTINGS = {
    "full fp32": [],
    "full bf16": ["--mixed_precision", "bf16"],
    "full bf16 + gradient checkpointing": ["--mixed_precision", "bf16", "--gradient_checkpointing"],
    "LoRA r16 fp32": ["--lora_rank", "16"],
    "LoRA r16 bf16 (frozen base bf16)": ["--lora_rank", "16", "--mixed_precision", "bf16"],
    "LoRA r16 bf16 + gradient checkpointing": [
        "--lora_rank",
        "16",
        "--mixed_precision",
        "bf16",
        "--gradient_checkpointing",
    ],
}


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Runs `command`; returns (its peak RSS in MiB, wall seconds). Raises if it fails."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{log.read()[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), help="names of SETTINGS to run")
    parser.add_argument("--output", default=None, help="JSON results")
    args = parser.parse_args()

    from syncdreamer_hf.tiny import save_tiny_training_setup

    size = SIZES[args.size]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pipeline_dir, cache_dir = save_tiny_training_setup(
            work, size["transformer"], size["height"], size["width"], size["num_frames"]
        )
        config = json.loads((pipeline_dir / "transformer" / "config.json").read_text())
        with torch.device("meta"):
            transformer = SyncDreamerTransformer3DModel.from_config(config)
        counts = {
            "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
            "new_branch_parameters": sum(p.numel() for p in transformer.new_branch_parameters()),
        }
        for name in args.settings:
            command = [
                sys.executable,
                str(TRAIN_SCRIPT),
                "--pretrained_model_name_or_path",
                str(pipeline_dir),
                "--cache_dir",
                str(cache_dir),
                "--output_dir",
                str(work / "run" / name.replace(" ", "_")),
                "--max_train_steps",
                "2",
                "--checkpointing_steps",
                "1000",
                "--report_to",
                "none",
                "--region_weights",
                "mouth=20",
                *SETTINGS[name],
            ]
            rss, seconds = peak_rss_mb(command)
            rows.append(
                {
                    "setting": name,
                    "peak_rss_mib": round(rss),
                    "seconds": round(seconds, 1),
                    "flags": " ".join(SETTINGS[name]),
                }
            )
            print(f"{name}: {rss:.0f} MiB ({seconds:.0f} s)", file=sys.stderr)

    print(
        f"\n{args.size}: transformer {counts['transformer_parameters']:,} parameters "
        f"({counts['new_branch_parameters']:,} in the new branches), {size['num_frames']} frames of "
        f"{size['height']}x{size['width']}, batch 1, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n"
    )
    print("| setting | peak RSS (MiB) | wall (s, 2 steps) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['peak_rss_mib']} | {row['seconds']} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"size": args.size, **size, **counts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
