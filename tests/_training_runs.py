"""Shared by the training tests: running `training_scripts/train_syncdreamer.py` in this process or in others
(one process, a killed one, `accelerate launch` with two), and reading back what a run trained."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from _scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training_scripts" / "train_syncdreamer.py"
PATCHED_TRAIN = Path(__file__).with_name("_patched_train.py")
LAUNCH_FSDP_ON_CPU = Path(__file__).with_name("_launch_fsdp_on_cpu.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
# the files a run writes for what it trained (the frozen components of a full run's pipeline folder aside)
TRAINED_FILES = (
    "transformer/*.safetensors",
    "visual_adapter/*.safetensors",
    "audio_dynamics_encoder/*.safetensors",
    "pytorch_lora_weights.safetensors",
    "transformer_new_branches.safetensors",
)

train = load_script("train_syncdreamer")


def train_argv(pipeline_dir, cache_dir, output_dir, steps, *extra):
    return [
        "--pretrained_model_name_or_path",
        str(pipeline_dir),
        "--cache_dir",
        str(cache_dir),
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--report_to",
        "none",
        "--learning_rate",
        "1e-3",
        "--region_weights",
        "mouth=20",
        *extra,
    ]


def run_in_process(argv):
    AcceleratorState._reset_state(True)
    try:
        train.main(argv)
    finally:
        AcceleratorState._reset_state(True)


def run_killed(argv, **patches) -> subprocess.CompletedProcess:
    """Runs the script in a subprocess through `_patched_train.py` (`patches`: its environment switches)."""
    env = {**ENV, **{f"PATCH_{name.upper()}": str(value) for name, value in patches.items()}}
    return subprocess.run(
        [sys.executable, str(PATCHED_TRAIN), str(SCRIPT), *argv], env=env, capture_output=True, text=True
    )


def trained_tensors(folder) -> dict:
    """`{file/key: tensor}` of every file in `TRAINED_FILES` under `folder`."""
    folder = Path(folder)
    return {
        f"{path.relative_to(folder)}/{key}": tensor
        for pattern in TRAINED_FILES
        for path in sorted(folder.glob(pattern))
        for key, tensor in load_file(path).items()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(script_and_args: list, *launch_flags, timeout=600, **patches) -> subprocess.CompletedProcess:
    """`accelerate launch` with 2 CPU processes (gloo) on a free port (`patches`: as `run_killed`, for a script run
    through `_patched_train.py`)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *launch_flags,
        *map(str, script_and_args),
    ]
    env = {**ENV, "ACCELERATE_USE_CPU": "1", **{f"PATCH_{name.upper()}": str(value) for name, value in patches.items()}}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
