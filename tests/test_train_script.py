"""training_scripts/train_syncdreamer.py on tiny components: overfitting, modality dropout, resume after a kill,
atomic checkpoints, two-process DDP, LoRA weights that load into SyncDreamerPipeline, and `--train_text_encoder`."""

import functools
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import UMT5EncoderModel

from _training_fixtures import FPS, save_tiny_pipeline, write_random_cache
from _training_runs import SCRIPT, accelerate_launch, run_in_process, run_killed, train
from _training_runs import train_argv as base_argv
from syncdreamer_hf.data.latent_cache import WINDOWS_DIR, CachedWindowDataset, collate_windows, window_file_name
from syncdreamer_hf.data.synthetic import TWIN_SUFFIX
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.training import PairedShuffleSampler, SyncDreamerTrainingModule, list_checkpoints


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_random_cache(tmp_path_factory.mktemp("cache"), num_windows=4)


def module_and_batch(pipeline_dir, cache_dir, **overrides):
    args = train.parse_args(["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(cache_dir)])
    for name, value in overrides.items():
        setattr(args, name, value)
    module = SyncDreamerTrainingModule.from_pretrained(pipeline_dir)
    module.set_trainable(args.stage, args.lora_rank, args.lora_alpha)
    dataset = CachedWindowDataset(cache_dir)
    batch = collate_windows([dataset[0], dataset[1]], dataset.info["max_sequence_length"], len(dataset.region_names))
    return args, module, dataset, batch


def loss_of(module, batch, args, dataset, seed):
    return train.training_loss(
        module, batch, args, torch.Generator().manual_seed(seed), dataset.empty_prompt_embeds, dataset.region_names,
        module.visual_adapter.config.query_regions, "cpu", torch.float32,
    )


def test_overfits_one_cached_batch(pipeline_dir, cache_dir):
    """50 steps on one batch (its noise and timesteps fixed too): the loss on it falls more than 10-fold."""
    torch.manual_seed(0)
    args, module, dataset, batch = module_and_batch(
        pipeline_dir, cache_dir, text_dropout=0.0, identity_dropout=0.0, audio_dropout=0.0
    )
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    losses = []
    for step in range(50):
        loss, logs = loss_of(module, batch, args, dataset, seed=0)
        assert "loss_localization" in logs  # the random cache has masks: both losses train
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(logs["loss_diffusion"])
    assert losses[-1] < 0.1 * losses[0], losses[::10]


class BranchSpy:
    """Records what the transformer's audio/identity inputs were on each call (a forward pre-hook)."""

    def __init__(self, transformer):
        self.calls = []
        transformer.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.calls.append({name: kwargs.get(name) for name in ("audio_embeds", "identity_embeds", "encoder_hidden_states")})


@pytest.mark.parametrize("stage,audio_dropout,hears_audio", [(2, 1.0, False), (2, 0.0, True), (1, 0.0, False)])
def test_audio_dropout_gives_the_audio_branch_none(pipeline_dir, cache_dir, stage, audio_dropout, hears_audio):
    args, module, dataset, batch = module_and_batch(
        pipeline_dir, cache_dir, stage=stage, audio_dropout=audio_dropout, identity_dropout=0.0, text_dropout=0.0
    )
    spy = BranchSpy(module.transformer)
    audio_branch_inputs = []
    module.transformer.blocks[0].attn_audio.register_forward_pre_hook(lambda m, a: audio_branch_inputs.append(a))
    for seed in range(5):
        loss_of(module, batch, args, dataset, seed)
    assert len(spy.calls) == 5
    assert all((call["audio_embeds"] is not None) == hears_audio for call in spy.calls)
    assert all(call["identity_embeds"] is not None for call in spy.calls)
    assert len(audio_branch_inputs) == (5 if hears_audio else 0)


def test_identity_and_text_dropout(pipeline_dir, cache_dir):
    args, module, dataset, batch = module_and_batch(
        pipeline_dir, cache_dir, identity_dropout=1.0, text_dropout=1.0, audio_dropout=0.0
    )
    spy = BranchSpy(module.transformer)
    _, logs = loss_of(module, batch, args, dataset, 0)
    assert spy.calls[0]["identity_embeds"] is None and "loss_localization" not in logs
    empty = torch.zeros_like(batch["prompt_embeds"][0])
    empty[: len(dataset.empty_prompt_embeds)] = dataset.empty_prompt_embeds
    for text in spy.calls[0]["encoder_hidden_states"]:
        torch.testing.assert_close(text, empty)


def test_mirrored_region_weights_raise_the_loss_and_must_be_weighted(pipeline_dir, cache_dir):
    base = ["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(cache_dir),
            "--region_weights", "mouth=20"]
    _, module, dataset, batch = module_and_batch(pipeline_dir, cache_dir)
    losses = {}
    for mirrored in ("", "mouth"):
        args = train.parse_args([*base, "--mirror_region_weights", mirrored])
        assert args.mirror_region_weights == ([mirrored] if mirrored else [])
        _, logs = loss_of(module, batch, args, dataset, 0)
        losses[mirrored] = logs["loss_diffusion"]
    assert losses["mouth"] > losses[""]  # the mouth's mirror (a jaw token, unweighted here) now weighs 20
    with pytest.raises(SystemExit):
        train.parse_args([*base, "--mirror_region_weights", "hands"])


@pytest.fixture(scope="module")
def twin_cache_dir(tmp_path_factory):
    """The random cache with clips 1 and 3 renamed as the side twins of clips 0 and 2."""
    cache = write_random_cache(tmp_path_factory.mktemp("twins"), num_windows=4)
    for original, twin in ((0, 1), (2, 3)):
        window = cache / WINDOWS_DIR / window_file_name(f"clip_{twin:05d}", 0)
        window.rename(cache / WINDOWS_DIR / window_file_name(f"clip_{original:05d}{TWIN_SUFFIX}", 0))
    return cache


def test_paired_sampler_keeps_pairs_together_at_even_positions():
    pairs = [(7, 2), (0, 9), (4, 5)]
    sampler = PairedShuffleSampler(11, pairs, seed=3)
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(11)) and order == list(sampler)  # a permutation, fixed by (seed, epoch)
        assert {(order[k], order[k + 1]) for k in range(0, 10, 2)} >= set(pairs)
        orders.append(order)
    assert orders[0] != orders[1]
    with pytest.raises(ValueError, match="disjoint"):
        PairedShuffleSampler(11, [(1, 2), (2, 3)], seed=0)


def test_twin_windows_are_found_by_name(twin_cache_dir):
    dataset = CachedWindowDataset(twin_cache_dir)
    pairs = dataset.twin_pairs(TWIN_SUFFIX)
    names = [(dataset[i]["window"], dataset[j]["window"]) for i, j in pairs]
    assert names == [("clip_00000_w000", "clip_00000_twin_w000"), ("clip_00002_w000", "clip_00002_twin_w000")]
    assert dataset.twin_pairs("_other") == []
    windows = [name for pair in names for name in pair]
    assert train.twin_positions(windows, TWIN_SUFFIX) == ([0, 2], [1, 3])
    assert train.twin_positions(windows[1:] + windows[:1], TWIN_SUFFIX) == ([], [])  # a pair must start evenly


def test_twin_difference_loss_shares_the_noise_of_a_pair(pipeline_dir, twin_cache_dir):
    """A window paired with an exact copy of itself: one noise for both, so the two predictions and the two targets
    are equal and the difference loss is 0 (independent noise would give it > 0); a real pair gives a positive one
    that joins the loss with its weight."""
    args, module, dataset, _ = module_and_batch(
        pipeline_dir, twin_cache_dir, twin_difference_weight=2.0, text_dropout=0.0, identity_dropout=0.0,
        audio_dropout=0.0,
    )
    pairs = dataset.twin_pairs(TWIN_SUFFIX)
    collate = functools.partial(
        collate_windows, max_sequence_length=dataset.info["max_sequence_length"], num_regions=len(dataset.region_names)
    )
    original, twin = dataset[pairs[0][0]], dataset[pairs[0][1]]
    copy = {**original, "window": twin["window"]}
    with torch.no_grad():
        loss, logs = loss_of(module, collate([original, copy]), args, dataset, 0)
        assert logs["loss_twin"] == pytest.approx(0.0, abs=1e-12) and loss.item() == pytest.approx(logs["loss"])
        loss, logs = loss_of(module, collate([original, twin]), args, dataset, 0)
        assert logs["loss_twin"] > 0
        assert logs["loss"] == pytest.approx(logs["loss_diffusion"] + 2.0 * logs["loss_twin"] + 0.4 * logs["loss_localization"], rel=1e-5)
        _, logs = loss_of(module, collate([twin, original]), args, dataset, 0)  # not in the sampler's order: no pair
        assert "loss_twin" not in logs


def test_twin_difference_weight_runs_and_needs_an_even_batch(pipeline_dir, twin_cache_dir, tmp_path):
    base = ["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(twin_cache_dir)]
    with pytest.raises(SystemExit):
        train.parse_args([*base, "--twin_difference_weight", "1", "--train_batch_size", "3"])
    with pytest.raises(SystemExit):
        train.parse_args([*base, "--twin_difference_weight", "-1"])
    run_in_process(base_argv(pipeline_dir, twin_cache_dir, tmp_path / "run", 2, "--twin_difference_weight", "1",
                             "--train_batch_size", "2"))
    assert (tmp_path / "run" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match="no window"):
        run_in_process(base_argv(pipeline_dir, twin_cache_dir, tmp_path / "none", 2, "--twin_difference_weight", "1",
                                 "--train_batch_size", "2", "--twin_suffix", "_other"))


def trained_weights(output_dir):
    return load_file(Path(output_dir) / "transformer" / "diffusion_pytorch_model.safetensors") | {
        "adapter." + k: v for k, v in load_file(Path(output_dir) / "visual_adapter" / "diffusion_pytorch_model.safetensors").items()
    }


def test_resume_after_kill_gives_identical_weights(pipeline_dir, cache_dir, tmp_path):
    # 4 windows, batch 1: 10 steps cross two epoch boundaries; stage 2 with dropout and localization loss on.
    run_in_process(base_argv(pipeline_dir, cache_dir, tmp_path / "straight", 10, "--checkpointing_steps", "100"))

    killed = tmp_path / "killed"
    argv = base_argv(pipeline_dir, cache_dir, killed, 10, "--checkpointing_steps", "5")
    result = run_killed(argv, kill_after_checkpoint=5)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert sorted(p.name for p in killed.iterdir() if "checkpoint" in p.name) == ["checkpoint-5"]
    assert not (killed / "transformer").exists()  # it really died before the end

    run_in_process([*argv, "--resume_from_checkpoint", "latest"])
    straight, resumed = trained_weights(tmp_path / "straight"), trained_weights(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    initial = load_file(Path(pipeline_dir) / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(initial["proj_out.weight"], straight["proj_out.weight"])  # it did train


def test_a_run_in_chunks_follows_one_decaying_schedule(pipeline_dir, cache_dir, tmp_path):
    """`--lr_schedule_steps`: 5 steps, then resumed to 10, on the whole run's cosine schedule give the weights of one
    10-step run (a chunk scheduled over its own --max_train_steps would decay to zero by step 5)."""
    schedule = ("--lr_scheduler", "cosine", "--lr_schedule_steps", "10", "--checkpointing_steps", "5")
    run_in_process(base_argv(pipeline_dir, cache_dir, tmp_path / "straight", 10, *schedule))
    chunked = tmp_path / "chunked"
    run_in_process(base_argv(pipeline_dir, cache_dir, chunked, 5, *schedule))
    run_in_process([*base_argv(pipeline_dir, cache_dir, chunked, 10, *schedule), "--resume_from_checkpoint", "latest"])
    straight, resumed = trained_weights(tmp_path / "straight"), trained_weights(chunked)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_a_failed_checkpoint_write_leaves_no_checkpoint(pipeline_dir, cache_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator

    def save_half_then_fail(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Accelerator, "save_state", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run_in_process(base_argv(pipeline_dir, cache_dir, tmp_path, 2, "--checkpointing_steps", "1"))
    assert list_checkpoints(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir() if "checkpoint" in p.name] == [".checkpoint-1.tmp"]


def test_two_process_gloo_ddp_keeps_ranks_identical(pipeline_dir, cache_dir, tmp_path):
    # accelerate 1.15 starts CPU processes only through mpirun with `--cpu`; torchrun (`--multi_gpu`) starts them,
    # and ACCELERATE_USE_CPU=1 makes each rank pick the gloo backend (DistributedType.MULTI_CPU).
    result = accelerate_launch(
        [SCRIPT, *base_argv(pipeline_dir, cache_dir, tmp_path, 3, "--checkpointing_steps", "100", "--lora_rank", "4")],
        "--multi_gpu", timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = dict(re.findall(r"rank (\d) trainable checksum ([0-9a-f]{64})", result.stderr + result.stdout))
    assert sorted(checksums) == ["0", "1"], result.stderr[-3000:]
    assert checksums["0"] == checksums["1"]
    assert "MULTI_CPU  Backend: gloo" in result.stderr and "Num processes: 2" in result.stdout + result.stderr
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()


def test_lora_output_loads_with_load_lora_weights_and_changes_the_output(pipeline_dir, cache_dir, tmp_path):
    from syncdreamer_hf.media import load_video

    image = (np.indices((32, 32)).sum(0)[..., None] * np.array([5, 3, 1]) % 256).astype(np.uint8)
    audio = (0.3 * np.sin(np.arange(5760) / 9)).astype(np.float32)
    import PIL.Image

    PIL.Image.fromarray(image).save(tmp_path / "reference.png")
    from syncdreamer_hf.media import save_video

    save_video(np.zeros((1, 32, 32, 3), np.uint8), tmp_path / "speech.mp4", fps=FPS, audio=audio)
    output_dir = tmp_path / "lora"
    run_in_process(
        base_argv(
            pipeline_dir, cache_dir, output_dir, 4, "--lora_rank", "4", "--learning_rate", "1e-2",
            "--checkpointing_steps", "100", "--validation_steps", "4", "--validation_image",
            str(tmp_path / "reference.png"), "--validation_audio", str(tmp_path / "speech.mp4"),
            "--validation_num_frames", "9", "--validation_inference_steps", "2",
        )
    )
    assert (output_dir / "pytorch_lora_weights.safetensors").is_file()
    frames, fps = load_video(output_dir / "validation" / "step-4.mp4")
    assert frames.shape == (9, 32, 32, 3) and fps == FPS

    def generate(pipe):
        return pipe(
            image=image, audio=audio, sample_rate=16000, prompt="a person talks", num_frames=9,
            num_inference_steps=2, generator=torch.Generator().manual_seed(0), max_sequence_length=16,
            output_type="latent",
        ).frames

    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    before = generate(pipe)
    pipe.load_lora_weights(output_dir)
    lora_state = load_file(output_dir / "pytorch_lora_weights.safetensors")
    assert lora_state and all(key.startswith("transformer.") and "lora_" in key for key in lora_state)
    assert any("attn1.to_q.lora_B" in key and lora_state[key].abs().sum() > 0 for key in lora_state)
    after_lora = generate(pipe)
    assert (after_lora - before).abs().max() > 1e-4
    full = SyncDreamerPipeline.from_pretrained(pipeline_dir).load_trained_modules(output_dir)
    full.set_progress_bar_config(disable=True)  # LoRA + the fully trained adapter, audio encoder, new branches
    assert (generate(full) - after_lora).abs().max() > 1e-6


# --train_text_encoder: the text encoder trains from the windows' captions, embeds them as the pipeline does, and
# is saved (and resumed) with the other trained models in the pipeline's format.


@pytest.fixture(scope="module")
def text_encoder_run(pipeline_dir, cache_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    run_in_process(base_argv(pipeline_dir, cache_dir, output_dir, 4, "--train_text_encoder", "--checkpointing_steps",
                              "2", "--learning_rate", "1e-2"))
    return output_dir


def text_encoder_weights(folder) -> dict[str, torch.Tensor]:
    return UMT5EncoderModel.from_pretrained(folder, subfolder="text_encoder").state_dict()


def test_the_module_embeds_captions_exactly_as_the_pipeline(pipeline_dir, cache_dir):
    """With text dropout 0 and 1, the transformer receives what `pipe.encode_prompt` gives for the captions and for
    the empty (negative) prompt: training and inference share one text path."""
    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir)
    module = SyncDreamerTrainingModule.from_pretrained(pipeline_dir, train_text_encoder=True)
    module.set_trainable(stage=2)
    dataset = CachedWindowDataset(cache_dir)
    batch = collate_windows([dataset[0], dataset[1]], dataset.info["max_sequence_length"], len(dataset.region_names))
    length = batch["prompt_embeds"].shape[1]
    received = []
    module.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: received.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    for dropout, prompts in ((0.0, batch["captions"]), (1.0, ["", ""])):
        args = train.parse_args(["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(cache_dir),
                                 "--train_text_encoder", "--text_dropout", str(dropout)])
        train.training_loss(module, batch, args, torch.Generator().manual_seed(0), dataset.empty_prompt_embeds,
                            dataset.region_names, module.visual_adapter.config.query_regions, "cpu", torch.float32,
                            tokenizer=pipe.tokenizer)
        expected, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=length)
        torch.testing.assert_close(received[-1], expected)
    assert not torch.equal(received[0], received[1])


def test_the_loss_reaches_the_text_encoder(pipeline_dir, cache_dir):
    module = SyncDreamerTrainingModule.from_pretrained(pipeline_dir, train_text_encoder=True)
    module.set_trainable(stage=2)
    dataset = CachedWindowDataset(cache_dir)
    batch = collate_windows([dataset[0], dataset[1]], dataset.info["max_sequence_length"], len(dataset.region_names))
    args = train.parse_args(["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(cache_dir),
                             "--train_text_encoder", "--text_dropout", "0"])
    loss, _ = train.training_loss(module, batch, args, torch.Generator().manual_seed(0), dataset.empty_prompt_embeds,
                                  dataset.region_names, module.visual_adapter.config.query_regions, "cpu",
                                  torch.float32, tokenizer=SyncDreamerPipeline.from_pretrained(pipeline_dir).tokenizer)
    loss.backward()
    grads = [p.grad for p in module.text_encoder.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_the_trained_text_encoder_is_saved_in_the_pipeline_and_in_checkpoints(pipeline_dir, text_encoder_run):
    base = text_encoder_weights(pipeline_dir)
    final = text_encoder_weights(text_encoder_run)
    assert any(not torch.equal(base[name], final[name]) for name in base)
    pipe = SyncDreamerPipeline.from_pretrained(text_encoder_run)  # the run's output is a pipeline with its text encoder
    for name, value in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(value, final[name], rtol=0, atol=0)
    checkpoints = list_checkpoints(text_encoder_run)
    assert [path.name for path in checkpoints][-1] == "checkpoint-4"
    first = text_encoder_weights(checkpoints[0])
    assert any(not torch.equal(first[name], final[name]) for name in base)  # checkpoint-2 holds its own step


def test_resuming_restores_the_text_encoder(pipeline_dir, cache_dir, text_encoder_run, tmp_path):
    """Resuming at step 2 of the 4-step run and training to 4 gives the run's final text encoder."""
    (tmp_path / "checkpoint-2").symlink_to(list_checkpoints(text_encoder_run)[0], target_is_directory=True)
    run_in_process(base_argv(pipeline_dir, cache_dir, tmp_path, 4, "--train_text_encoder", "--checkpointing_steps",
                              "2", "--learning_rate", "1e-2", "--resume_from_checkpoint", "latest"))
    resumed, final = text_encoder_weights(tmp_path), text_encoder_weights(text_encoder_run)
    for name, value in final.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
