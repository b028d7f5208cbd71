"""training_scripts/train_tiny_vae.py on tiny settings: it learns, resumes, and saves a VAE the pipeline can use."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training_scripts" / "train_tiny_vae.py"

spec = importlib.util.spec_from_file_location("train_tiny_vae", SCRIPT)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

TINY = ["--base_dim", "4", "--height", "32", "--width", "32", "--num_frames", "5", "--num_train_clips", "2",
        "--learning_rate", "3e-3", "--lr_warmup_steps", "1", "--logging_steps", "5", "--stats_clips", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("tiny_vae")
    summary = train.main([*TINY, "--output_dir", str(output_dir), "--max_train_steps", "30",
                          "--checkpointing_steps", "10"])
    return output_dir, summary


def test_a_few_steps_reduce_the_reconstruction_loss(trained):
    output_dir, summary = trained
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    assert summary["step"] == 30 and [record["step"] for record in log] == [5, 10, 15, 20, 25, 30]
    assert log[-1]["l1"] < 0.8 * log[0]["l1"]
    assert log[-1]["loss"] < log[0]["loss"]


def test_saved_vae_reloads_with_consistent_scale_factors_and_latent_statistics(trained):
    output_dir, _ = trained
    vae = AutoencoderKLWan.from_pretrained(output_dir / "vae")
    assert vae.config.scale_factor_spatial == 4 and vae.config.scale_factor_temporal == 4
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == vae.config.z_dim == 16
    assert all(std > 0 for std in vae.config.latents_std)
    train.check_scale_factors(vae, num_frames=9, height=32, width=32)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 9, 32, 32)).latent_dist.mode()
    assert latents.shape == (1, 16, 3, 8, 8)


def test_resume_continues_from_the_latest_checkpoint(trained, tmp_path):
    output_dir, _ = trained
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").glob("checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-20.pt", "checkpoint-30.pt"]  # the newest two are kept
    summary = train.main([*TINY, "--output_dir", str(output_dir), "--max_train_steps", "35", "--resume"])
    assert summary["step"] == 35
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 35


@pytest.mark.parametrize("dim_mult, spatial", [([1, 1, 1], 4), ([1, 1, 1, 1], 8)])
def test_config_scale_factors_match_the_actual_compression(dim_mult, spatial):
    args = train.parse_args(["--output_dir", "unused", "--base_dim", "2", "--dim_mult", *map(str, dim_mult)])
    vae = train.build_vae(args)
    assert vae.config.scale_factor_spatial == spatial
    train.check_scale_factors(vae, num_frames=5, height=32, width=32)


def test_clip_length_must_fit_the_temporal_compression():
    with pytest.raises(SystemExit):
        train.parse_args(["--output_dir", "unused", "--num_frames", "8"])


def test_frame_autoencoder_learns_and_reloads(tmp_path):
    from syncdreamer_hf import SyncDreamerFrameAutoencoder
    from syncdreamer_hf.tiny import load_vae

    # any clip length: the frame autoencoder has no temporal compression
    summary = train.main([*TINY, "--num_frames", "6", "--architecture", "frame", "--output_dir", str(tmp_path),
                          "--max_train_steps", "30", "--posterior", "mode"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["step"] == 30 and log[-1]["l1"] < 0.8 * log[0]["l1"]
    vae = load_vae(tmp_path / "vae")
    assert type(vae) is SyncDreamerFrameAutoencoder and vae.config.scale_factor_temporal == 1
    assert all(std > 0 for std in vae.config.latents_std)
    train.check_scale_factors(vae, num_frames=6, height=32, width=32)
