"""Checkpoints of training_scripts/train_syncdreamer.py (`syncdreamer_hf.training.checkpointing`): each holds what
was trained in the format the pipeline loads, a run resumes bit-exact after a kill at any point (after the last
checkpoint, during a checkpoint write with `--checkpoints_total_limit 1`), checkpoints of the older format still
resume, and mixed precision keeps the trainable weights in float32."""

import os
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from _training_fixtures import save_tiny_pipeline, write_random_cache
from _training_runs import run_in_process, run_killed, train, train_argv, trained_tensors
from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows
from syncdreamer_hf.pipeline_syncdreamer import NEW_BRANCHES_FILE, SyncDreamerPipeline
from syncdreamer_hf.training import list_checkpoints

# 4 windows, batch 1: 4 steps per epoch; runs of 6 steps end mid-epoch (6 % 4 != 0)
LORA = ("--lora_rank", "4")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_random_cache(tmp_path_factory.mktemp("cache"), num_windows=4)


@pytest.fixture(scope="module")
def straight(pipeline_dir, cache_dir, tmp_path_factory):
    """Uninterrupted runs, by (mode, steps): what every interrupted run must end equal to."""
    runs = {}

    def run(mode: tuple, steps: int):
        if (mode, steps) not in runs:
            output_dir = tmp_path_factory.mktemp("straight")
            run_in_process(
                train_argv(pipeline_dir, cache_dir, output_dir, steps, "--checkpointing_steps", "100", *mode)
            )
            runs[mode, steps] = trained_tensors(output_dir)
        return runs[mode, steps]

    return run


def assert_same(actual: dict, expected: dict):
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_lora_checkpoint_is_what_the_pipeline_loads_and_the_run_resumes_bit_exact(
    pipeline_dir, cache_dir, straight, tmp_path
):
    argv = train_argv(pipeline_dir, cache_dir, tmp_path, 6, "--checkpointing_steps", "3", *LORA)
    assert run_killed(argv, kill_after_checkpoint=3).returncode == -signal.SIGKILL
    checkpoint = tmp_path / "checkpoint-3"
    # the LoRA layers, the new branches and the fully trained models, exactly as a 3-step run's final output...
    assert_same(trained_tensors(checkpoint), straight(LORA, 3))
    assert not (checkpoint / "model.safetensors").exists()  # ...and no second copy of the whole model
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {path.name for path in checkpoint.iterdir()}
    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir).load_trained_modules(checkpoint)
    for name, tensor in load_file(checkpoint / NEW_BRANCHES_FILE).items():
        torch.testing.assert_close(pipe.transformer.state_dict()[name], tensor, rtol=0, atol=0)
    assert any(
        "lora_B" in name and parameter.abs().sum() > 0 for name, parameter in pipe.transformer.named_parameters()
    )

    run_in_process([*argv, "--resume_from_checkpoint", "latest"])
    assert_same(trained_tensors(tmp_path), straight(LORA, 6))


def test_a_full_run_checkpoint_is_a_pipeline_folder_sharing_the_frozen_files(pipeline_dir, cache_dir, tmp_path):
    argv = train_argv(pipeline_dir, cache_dir, tmp_path, 4, "--checkpointing_steps", "2")
    assert run_killed(argv, kill_after_checkpoint=2).returncode == -signal.SIGKILL
    checkpoint = tmp_path / "checkpoint-2"
    pipe = SyncDreamerPipeline.from_pretrained(checkpoint)
    trained = load_file(checkpoint / "transformer" / "diffusion_pytorch_model.safetensors")
    initial = load_file(pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(trained["proj_out.weight"], initial["proj_out.weight"])  # it trained
    for name, tensor in trained.items():
        torch.testing.assert_close(pipe.transformer.state_dict()[name], tensor, rtol=0, atol=0)
    # the frozen components are the base pipeline's files (hard links: no extra disk)
    frozen = checkpoint / "text_encoder" / "model.safetensors"
    assert os.path.samefile(frozen, pipeline_dir / "text_encoder" / "model.safetensors")


def test_a_run_killed_after_its_last_checkpoint_resumes_without_an_extra_step(
    pipeline_dir, cache_dir, straight, tmp_path
):
    argv = train_argv(pipeline_dir, cache_dir, tmp_path, 6, "--checkpointing_steps", "4", *LORA)
    assert run_killed(argv, kill_after_checkpoint=6).returncode == -signal.SIGKILL
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()  # killed before the final save
    run_in_process([*argv, "--resume_from_checkpoint", "latest"])
    assert_same(trained_tensors(tmp_path), straight(LORA, 6))
    assert_same(trained_tensors(tmp_path), trained_tensors(tmp_path / "checkpoint-6"))


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint_with_total_limit_1(
    pipeline_dir, cache_dir, straight, tmp_path
):
    argv = train_argv(
        pipeline_dir, cache_dir, tmp_path, 6, "--checkpointing_steps", "2", "--checkpoints_total_limit", "1", *LORA
    )
    assert run_killed(argv, kill_during_save=2).returncode == -signal.SIGKILL  # while writing checkpoint-4
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert (tmp_path / ".checkpoint-4.tmp").is_dir()
    run_in_process([*argv, "--resume_from_checkpoint", "latest"])
    assert_same(trained_tensors(tmp_path), straight(LORA, 6))
    # the limit holds, and the interrupted write's temporary folder is gone
    assert sorted(path.name for path in tmp_path.iterdir() if "checkpoint" in path.name) == ["checkpoint-6"]


def test_a_checkpoint_of_the_older_format_still_resumes(pipeline_dir, cache_dir, straight, tmp_path):
    """Checkpoints written before the save/load hooks hold accelerate's `model.safetensors`: a run resumes from them."""
    argv = train_argv(pipeline_dir, cache_dir, tmp_path, 6, "--checkpointing_steps", "3", *LORA)
    killed = run_killed(argv, kill_after_checkpoint=3, without_checkpoint_hooks=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "checkpoint-3" / "model.safetensors").is_file()
    run_in_process([*argv, "--resume_from_checkpoint", "latest"])
    assert_same(trained_tensors(tmp_path), straight(LORA, 6))


def test_bf16_keeps_the_frozen_base_in_bf16_and_the_trained_weights_in_float32(pipeline_dir, cache_dir, tmp_path):
    args = train.parse_args(train_argv(pipeline_dir, cache_dir, tmp_path, 2, *LORA))
    module = train.load_training_module(args, torch.bfloat16)
    keep_fp32 = module.transformer._keep_in_fp32_modules
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32, name
        elif not any(part in keep_fp32 for part in name.split(".")):
            assert parameter.dtype == torch.bfloat16, name
    frozen = sum(p.numel() for p in module.parameters() if p.dtype == torch.bfloat16)
    assert frozen > 0.5 * sum(p.numel() for p in module.transformer.parameters())

    run_in_process(
        train_argv(
            pipeline_dir,
            cache_dir,
            tmp_path,
            2,
            *LORA,
            "--mixed_precision",
            "bf16",
            "--gradient_checkpointing",
            "--checkpointing_steps",
            "100",
        )
    )
    saved = trained_tensors(tmp_path)
    assert saved and all(tensor.dtype == torch.float32 and tensor.isfinite().all() for tensor in saved.values())
    SyncDreamerPipeline.from_pretrained(pipeline_dir).load_trained_modules(tmp_path)


def test_gradient_checkpointing_gives_the_same_gradients(pipeline_dir, cache_dir):
    args = train.parse_args(train_argv(pipeline_dir, cache_dir, "unused", 1))
    module = train.load_training_module(args, torch.float32)
    dataset = CachedWindowDataset(cache_dir)
    batch = collate_windows([dataset[0], dataset[1]], dataset.info["max_sequence_length"], len(dataset.region_names))

    def gradients():
        module.zero_grad()
        loss, _ = train.training_loss(
            module,
            batch,
            args,
            torch.Generator().manual_seed(0),
            dataset.empty_prompt_embeds,
            dataset.region_names,
            module.visual_adapter.config.query_regions,
            "cpu",
            torch.float32,
        )
        loss.backward()
        return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}

    plain = gradients()
    module.transformer.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_8bit_adam_without_bitsandbytes_names_the_install(pipeline_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        train.main(train_argv(pipeline_dir, cache_dir, tmp_path, 1, "--use_8bit_adam"))
