"""The reference sink (every window knows the reference latent as an extra leading frame) and the motion-latent
noise, in the pipeline and in training: what each window's condition holds, that a saved pipeline reproduces the
choice, that folders saved before the option load unchanged, and the training flags."""

from pathlib import Path

import numpy as np
import pytest
import torch

from _scripts import load_script
from _training_fixtures import save_tiny_pipeline, write_random_cache
from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows
from syncdreamer_hf.media import load_image
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components
from syncdreamer_hf.training import SyncDreamerTrainingModule

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
REFERENCE = (np.indices((32, 32)).sum(0)[..., None] * np.array([3, 2, 1]) % 256).astype(np.uint8)
AUDIO = (0.3 * np.sin(np.arange(round(0.61 * SAMPLE_RATE)) / 40)).astype(np.float32)  # 15 frames: 2 windows

train = load_script("train_syncdreamer")


def tiny_pipe(**config):
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=0), **{**TINY_PIPELINE_CONFIG, **config})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def transformer_inputs(pipe, **kwargs):
    """Runs the pipeline (2 windows, 2 steps each, no guidance) and returns the transformer's `hidden_states` of
    every call, and the output latents."""
    seen = []
    original = pipe.transformer.forward

    def spy(**inputs):
        seen.append(inputs["hidden_states"].clone())
        if inputs["audio_embeds"] is not None:
            assert inputs["audio_embeds"].shape[1] == inputs["hidden_states"].shape[2]
        return original(**inputs)

    pipe.transformer.forward = spy
    try:
        output = pipe(image=REFERENCE, audio=AUDIO, sample_rate=SAMPLE_RATE, prompt="a person talks",
                      num_inference_steps=2, guidance_scale=1.0, audio_guidance_scale=1.0, max_sequence_length=16,
                      generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    finally:
        del pipe.transformer.forward
    return seen, output.frames


def reference_latent(pipe):
    return pipe.encode_reference([load_image(REFERENCE)], 32, 32, "cpu")  # (1, 16, 1, 4, 4)


def test_every_window_knows_the_reference_as_its_first_frame():
    pipe = tiny_pipe(reference_sink=True)
    calls, latents = transformer_inputs(pipe)
    assert len(calls) == 4  # 2 windows x 2 steps
    reference = reference_latent(pipe)
    for window, hidden_states in enumerate(calls[::2]):
        assert hidden_states.shape == (1, 36, 1 + 3, 4, 4)  # the sink + the window's 3 latent frames
        mask, condition = hidden_states[:, 16:20], hidden_states[:, 20:]
        torch.testing.assert_close(condition[:, :, :1], reference)  # the sink, in every window
        assert (mask[:, :, :2] == 1).all() and (mask[:, :, 2:] == 0).all()  # sink + one known frame
        if window == 0:
            torch.testing.assert_close(condition[:, :, 1:2], reference)
        else:  # the carried motion latent of window 0, not the reference
            torch.testing.assert_close(condition[:, :, 1:2], latents[:, :, 2:3])
    assert latents.shape == (1, 16, 5, 4, 4)  # the sink frames are not in the output


def test_without_the_sink_later_windows_know_only_the_motion_latents():
    pipe = tiny_pipe()
    calls, latents = transformer_inputs(pipe)
    assert calls[2].shape == (1, 36, 3, 4, 4)
    torch.testing.assert_close(calls[2][:, 20:, :1], latents[:, :, 2:3])
    assert (calls[2][:, 16:20, 1:] == 0).all()


def test_motion_latent_noise_noises_the_carried_latents_deterministically():
    noisy_calls, latents = transformer_inputs(tiny_pipe(reference_sink=True, motion_latent_noise=0.5))
    carried = noisy_calls[2][:, 20:, 1:2]
    assert (carried - latents[:, :, 2:3]).abs().mean() > 0.1
    again, _ = transformer_inputs(tiny_pipe(reference_sink=True, motion_latent_noise=0.5))
    torch.testing.assert_close(again[2], noisy_calls[2])


def test_a_saved_pipeline_reproduces_the_reference_sink(tmp_path):
    pipe = tiny_pipe(reference_sink=True, motion_latent_noise=0.1, default_max_sequence_length=16)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.reference_sink is True and loaded.config.motion_latent_noise == 0.1
    assert loaded.config.default_max_sequence_length == 16
    _, expected = transformer_inputs(pipe)
    _, reloaded = transformer_inputs(loaded)
    torch.testing.assert_close(reloaded, expected)
    _, without_sink = transformer_inputs(tiny_pipe(motion_latent_noise=0.1))
    assert (without_sink - expected).abs().max() > 1e-3


@pytest.mark.parametrize("folder", ["syncdreamer-tiny-random"])
def test_a_folder_saved_before_the_option_keeps_the_old_windows(folder):
    config = SyncDreamerPipeline.load_config(REPO / "pipelines" / folder)
    assert "reference_sink" not in config  # saved before the option existed
    pipe = SyncDreamerPipeline.from_pretrained(REPO / "pipelines" / folder)
    assert pipe.config.reference_sink is False and pipe.config.motion_latent_noise == 0.0
    assert pipe.config.default_max_sequence_length == 512


def test_max_sequence_length_defaults_to_the_config():
    pipe = tiny_pipe(default_max_sequence_length=8)
    lengths = []
    original = pipe.transformer.forward
    pipe.transformer.forward = lambda **inputs: lengths.append(inputs["encoder_hidden_states"].shape[1]) or original(**inputs)
    try:
        pipe(image=REFERENCE, audio=AUDIO[:5000], sample_rate=SAMPLE_RATE, prompt="a person talks",
             num_inference_steps=1, output_type="latent")
    finally:
        del pipe.transformer.forward
    assert set(lengths) == {8}


# --- training ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


def training_inputs(pipeline_dir, cache_dir, *flags, seed=0):
    """The transformer input and the loss of one `training_loss` call with `flags` (motion latents always known)."""
    args = train.parse_args(["--pretrained_model_name_or_path", str(pipeline_dir), "--cache_dir", str(cache_dir),
                             "--motion_condition_prob", "1", "--num_motion_latents", "2", *flags])
    module = SyncDreamerTrainingModule.from_pretrained(pipeline_dir)
    transformer, adapter = module.transformer, module.visual_adapter
    dataset = CachedWindowDataset(cache_dir)
    batch = collate_windows([dataset[0], dataset[1]], dataset.info["max_sequence_length"], len(dataset.region_names))
    seen = []
    original = transformer.forward
    transformer.forward = lambda **inputs: seen.append(inputs) or original(**inputs)
    loss, _ = train.training_loss(module, batch, args, torch.Generator().manual_seed(seed), dataset.empty_prompt_embeds,
                                  dataset.region_names, adapter.config.query_regions, "cpu", torch.float32)
    return seen[0], batch, loss


def test_training_with_the_sink_builds_windows_as_the_pipeline(pipeline_dir, tmp_path):
    cache = write_random_cache(tmp_path / "cache", num_windows=2)
    inputs, batch, loss = training_inputs(pipeline_dir, cache, "--reference_sink", "--lambda_loc", "0.4")
    hidden_states = inputs["hidden_states"]
    assert hidden_states.shape == (2, 36, 1 + 3, 4, 4)
    torch.testing.assert_close(hidden_states[:, 20:, :1], batch["reference_latents"])
    torch.testing.assert_close(hidden_states[:, 20:, 1:3], batch["latents"][:, :, :2])  # clean motion latents
    assert (hidden_states[:, 16:20, :3] == 1).all() and (hidden_states[:, 16:20, 3:] == 0).all()
    assert inputs["audio_embeds"].shape[1] == 4 and (inputs["audio_embeds"][:, 0] == 0).all()  # silent sink
    assert torch.isfinite(loss)


def test_motion_noise_flag_noises_only_the_motion_latents(pipeline_dir, tmp_path):
    cache = write_random_cache(tmp_path / "cache", num_windows=2)
    inputs, batch, _ = training_inputs(pipeline_dir, cache, "--reference_sink", "--motion_noise_max_sigma", "1")
    condition = inputs["hidden_states"][:, 20:]
    torch.testing.assert_close(condition[:, :, :1], batch["reference_latents"])  # the sink stays clean
    assert (condition[:, :, 1:3] - batch["latents"][:, :, :2]).abs().mean() > 0.05


def test_the_sink_flag_needs_reference_latents_in_the_cache(pipeline_dir, tmp_path):
    cache = write_random_cache(tmp_path / "old_cache", num_windows=2, with_reference=False)
    with pytest.raises(ValueError, match="reference_latents"):
        training_inputs(pipeline_dir, cache, "--reference_sink")
