"""FSDP (training_scripts/accelerate_configs/fsdp.yaml) on two CPU processes: training_scripts/train_syncdreamer.py
trains, validates, checkpoints, resumes after a kill and saves a loadable pipeline, with the weights a DDP run
reaches. accelerate runs FSDP on CPU only through `_launch_fsdp_on_cpu.py` (see there)."""

import signal

import numpy as np
import PIL.Image
import pytest
import torch

from _training_fixtures import FPS, save_tiny_pipeline, write_random_cache
from _training_runs import (
    LAUNCH_FSDP_ON_CPU,
    PATCHED_TRAIN,
    REPO,
    SCRIPT,
    accelerate_launch,
    train_argv,
    trained_tensors,
)
from syncdreamer_hf.media import load_video, save_video
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

FSDP_CONFIG = REPO / "training_scripts" / "accelerate_configs" / "fsdp.yaml"


@pytest.mark.slow
def test_fsdp_trains_validates_resumes_and_saves_what_ddp_does(tmp_path):
    pipeline_dir = save_tiny_pipeline(tmp_path / "pipe")
    cache_dir = write_random_cache(tmp_path / "cache", num_windows=4)
    image = (np.indices((32, 32)).sum(0)[..., None] * np.array([5, 3, 1]) % 256).astype(np.uint8)
    PIL.Image.fromarray(image).save(tmp_path / "reference.png")
    audio = (0.3 * np.sin(np.arange(5760) / 9)).astype(np.float32)
    save_video(np.zeros((1, 32, 32, 3), np.uint8), tmp_path / "speech.mp4", fps=FPS, audio=audio)
    validation = [
        "--validation_steps",
        "4",
        "--validation_image",
        tmp_path / "reference.png",
        "--validation_audio",
        tmp_path / "speech.mp4",
        "--validation_num_frames",
        "9",
        "--validation_inference_steps",
        "2",
    ]

    fsdp_dir = tmp_path / "fsdp"
    fsdp_argv = [
        LAUNCH_FSDP_ON_CPU,
        PATCHED_TRAIN,
        SCRIPT,
        *train_argv(pipeline_dir, cache_dir, fsdp_dir, 4, "--checkpointing_steps", "2", *validation),
    ]
    killed = accelerate_launch(fsdp_argv, "--config_file", FSDP_CONFIG, kill_after_checkpoint=2)
    assert killed.returncode != 0 and f"exitcode  : {-signal.SIGKILL}" in killed.stderr, killed.stderr[-3000:]
    assert (fsdp_dir / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # accelerate saved as FSDP: it ran FSDP
    assert not (fsdp_dir / "model_index.json").exists()  # killed before the end
    SyncDreamerPipeline.from_pretrained(fsdp_dir / "checkpoint-2")  # a pipeline folder from the gathered shards

    resumed = accelerate_launch([*fsdp_argv, "--resume_from_checkpoint", "latest"], "--config_file", FSDP_CONFIG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    frames, fps = load_video(fsdp_dir / "validation" / "step-4.mp4")
    assert frames.shape == (9, 32, 32, 3) and fps == FPS
    SyncDreamerPipeline.from_pretrained(fsdp_dir)

    ddp_dir = tmp_path / "ddp"
    ddp = accelerate_launch(
        [SCRIPT, *train_argv(pipeline_dir, cache_dir, ddp_dir, 4, "--checkpointing_steps", "100")], "--multi_gpu"
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp_weights, ddp_weights = trained_tensors(fsdp_dir), trained_tensors(ddp_dir)
    assert fsdp_weights.keys() == ddp_weights.keys() and fsdp_weights
    initial = trained_tensors(pipeline_dir)
    assert any(not torch.equal(initial[name], ddp_weights[name]) for name in initial)  # it trained
    for name in ddp_weights:  # the same math; only the order of the gradient-norm sums differs
        torch.testing.assert_close(fsdp_weights[name], ddp_weights[name], rtol=1e-4, atol=1e-5, msg=name)
