"""Conformance with diffusers: the behaviours diffusers' model and pipeline testers check, asserted on our four model
classes and on `SyncDreamerPipeline` (our own tests of the same behaviours; diffusers' helpers look pipelines up
inside `diffusers.pipelines` and cannot see ours)."""

import copy
import inspect
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

from syncdreamer_hf import SyncDreamerFrameAutoencoder, SyncDreamerPipeline
from syncdreamer_hf.tiny import (
    AUDIO_DIM,
    AUDIO_FEATURE_DIM,
    IDENTITY_DIM,
    IMAGE_EMBED_DIM,
    TEXT_DIM,
    TINY_PIPELINE_CONFIG,
    build_tiny_components,
)


@pytest.fixture(scope="module")
def tiny_components():
    return build_tiny_components(seed=0)


def model_inputs(name: str, model) -> dict:
    """Deterministic keyword inputs of one model's forward, batch of 2."""
    generator = torch.Generator().manual_seed(1)
    if name == "transformer":
        num_latent_frames, tokens = 3, model.config.in_channels
        return {
            "hidden_states": torch.randn(2, tokens, num_latent_frames, 4, 4, generator=generator),
            "timestep": torch.tensor([120.0, 870.0]),
            "encoder_hidden_states": torch.randn(2, 5, TEXT_DIM, generator=generator),
            "identity_embeds": torch.randn(2, 8, IDENTITY_DIM, generator=generator),
            "audio_embeds": torch.randn(2, num_latent_frames, 4, AUDIO_DIM, generator=generator),
        }
    if name == "visual_adapter":
        return {"image_embeds": torch.randn(2, 17, IMAGE_EMBED_DIM, generator=generator)}
    if name == "audio_dynamics_encoder":
        num_layers = model.config.num_audio_layers
        return {
            "audio_hidden_states": torch.randn(2, num_layers, 30, AUDIO_FEATURE_DIM, generator=generator),
            "num_frames": 9,
        }
    return {"sample": torch.rand(2, 3, 2, 16, 16, generator=generator) * 2 - 1}


MODEL_NAMES = ["transformer", "visual_adapter", "audio_dynamics_encoder", "frame_autoencoder"]


@pytest.fixture(params=MODEL_NAMES)
def case(request, tiny_components):
    """`(name, model)`: a fresh copy of one tiny model in eval mode, with non-zero weights everywhere."""
    name = request.param
    if name == "frame_autoencoder":
        torch.manual_seed(0)
        model = SyncDreamerFrameAutoencoder(z_dim=4, block_out_channels=(8, 16), scale_factor_spatial=2)
    else:
        model = copy.deepcopy(tiny_components[name])
    return name, model.eval()


def first_output(model, inputs) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


@torch.no_grad()
def test_save_load_round_trip_gives_the_same_config_and_output(case, tmp_path):
    name, model = case
    inputs = model_inputs(name, model)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {key: saved[key] for key in loaded.config if not key.startswith("_")} == json.loads(
        json.dumps({key: value for key, value in loaded.config.items() if not key.startswith("_")})
    )
    torch.testing.assert_close(first_output(loaded, inputs), first_output(model, inputs), atol=0, rtol=0)


@torch.no_grad()
def test_fp16_variant_is_saved_beside_and_loaded_by_name(case, tmp_path):
    name, model = case
    reference = copy.deepcopy(model)
    model.to(torch.float16).save_pretrained(tmp_path, variant="fp16")
    reference.load_state_dict({key: value.float() for key, value in model.state_dict().items()})  # fp16-rounded
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(OSError):
        type(model).from_pretrained(tmp_path)  # the plain weights file does not exist
    loaded = type(model).from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    keep_in_fp32 = model._keep_in_fp32_modules or []
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in loaded.state_dict().items():
        in_fp32 = any(module in key.split(".") for module in keep_in_fp32)
        assert value.dtype == (torch.float32 if in_fp32 else torch.float16), key
        torch.testing.assert_close(value.half(), model.state_dict()[key], atol=0, rtol=0)
    inputs = model_inputs(name, model)
    torch.testing.assert_close(first_output(loaded.float(), inputs), first_output(reference, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("variant", [None, "fp16"])
@torch.no_grad()
def test_sharded_checkpoint_loads_back_the_same_model(case, tmp_path, variant):
    name, model = case
    inputs = model_inputs(name, model)
    expected = first_output(model, inputs)
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(tmp_path, variant=variant, max_shard_size=total_bytes // 4)
    (index_file,) = tmp_path.glob("*.index*.json")
    assert index_file.name == (
        "diffusion_pytorch_model.safetensors.index" + (f".{variant}" if variant else "") + ".json"
    )
    index = json.loads(index_file.read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3 and all((tmp_path / shard).is_file() for shard in shards)
    assert set(index["weight_map"]) == set(model.state_dict())
    loaded = type(model).from_pretrained(tmp_path, variant=variant).eval()
    torch.testing.assert_close(first_output(loaded, inputs), expected, atol=0, rtol=0)


@torch.no_grad()
def test_forward_is_deterministic_and_finite(case):
    name, model = case
    inputs = model_inputs(name, model)
    first, second = first_output(model, inputs), first_output(model, inputs)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@torch.no_grad()
def test_return_dict_false_is_the_output_as_a_tuple(case):
    name, model = case
    inputs = model_inputs(name, model)
    as_dict, as_tuple = model(**inputs), model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for from_dict, from_tuple in zip(as_dict.to_tuple(), as_tuple):
        torch.testing.assert_close(from_tuple, from_dict, atol=0, rtol=0)
    assert torch.equal(as_dict[0], as_tuple[0])  # BaseOutput indexes like the tuple


def test_training_step_reaches_every_parameter_and_changes_the_weights(case):
    name, model = case
    model.train()
    inputs = model_inputs(name, model)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    output = first_output(model, inputs)
    loss = torch.nn.functional.mse_loss(output, torch.randn(output.shape, generator=torch.Generator().manual_seed(2)))
    loss.backward()
    missing = [key for key, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    torch.optim.SGD(model.parameters(), lr=1e-2).step()
    changed = [key for key, parameter in model.named_parameters() if not torch.equal(parameter, before[key])]
    assert changed and len(changed) >= len(list(model.parameters())) // 2
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(first_output(model, inputs), output) > 0


def cast_layers(model) -> list[str]:
    """The names of the layers `enable_layerwise_casting` stores in the storage dtype: diffusers' supported layer
    types, outside the default and the model's own skip patterns and `_keep_in_fp32_modules`."""
    import re

    patterns = (
        DEFAULT_SKIP_MODULES_PATTERN
        + tuple(model._skip_layerwise_casting_patterns or ())
        + tuple(model._keep_in_fp32_modules or ())
    )
    names = []
    for name, module in model.named_modules():
        inside_skipped = any(re.search(p, prefix) for p in patterns for prefix in _prefixes(name))
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and not inside_skipped:
            names.append(name)
    return names


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.bfloat16])
@torch.no_grad()
def test_layerwise_casting_stores_in_low_precision_and_computes_in_fp32(case, storage_dtype):
    """With layerwise casting the weights are stored in `storage_dtype` and upcast for each layer's forward, so the
    output equals the fp32 model whose cast layers' weights were rounded to `storage_dtype` once."""
    name, model = case
    inputs = model_inputs(name, model)
    layers = cast_layers(model)
    assert layers, "nothing would be cast"
    rounded = copy.deepcopy(model)
    modules = dict(rounded.named_modules())
    for layer in layers:
        for parameter in modules[layer].parameters(recurse=False):
            parameter.copy_(parameter.to(storage_dtype).float())
    expected = first_output(rounded, inputs)

    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    stored = {key: value.dtype for key, value in model.state_dict().items()}
    low = {key for key, dtype in stored.items() if dtype == storage_dtype}
    assert low == {f"{layer}.{p}" for layer in layers for p, _ in dict(model.named_modules())[layer].named_parameters()}
    output = first_output(model, inputs)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert {key: value.dtype for key, value in model.state_dict().items()} == stored  # back to storage after forward


# ---------------------------------------------------------------------------------------------------------------
# The pipeline

SAMPLE_RATE, FPS = 16000, 25
REFERENCE = (np.indices((40, 48)).sum(0)[..., None] * np.array([3, 2, 1]) % 256).astype(np.uint8)
ENCODERS = ("tokenizer", "text_encoder", "image_processor", "image_encoder", "feature_extractor", "audio_encoder")


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * noise * np.abs(np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def tiny_pipeline(**components) -> SyncDreamerPipeline:
    pipe = SyncDreamerPipeline(**{**build_tiny_components(seed=0), **components}, **TINY_PIPELINE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def call(pipe, seconds=0.36, seed=0, **kwargs):
    """9 frames (one window) by default; 0.61 s is 15 frames, two windows."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    kwargs = {
        "image": REFERENCE,
        "audio": speech(seconds),
        "prompt": "a person talks",
        "sample_rate": SAMPLE_RATE,
        "num_inference_steps": 2,
        "generator": generator,
        "max_sequence_length": 16,
        **kwargs,
    }
    return pipe(**kwargs)


def test_call_signature_has_the_names_of_diffusers_wan_pipelines():
    from diffusers import WanImageToVideoPipeline

    ours = inspect.signature(SyncDreamerPipeline.__call__).parameters
    wan = inspect.signature(WanImageToVideoPipeline.__call__).parameters
    wan_only = {"guidance_scale_2", "last_image"}  # Wan2.2's second expert, first-last-frame-to-video
    assert set(wan) - wan_only <= set(ours)
    for name in set(wan) - wan_only - {"self", "image"}:
        assert ours[name].default == wan[name].default or name in {
            "num_inference_steps",
            "guidance_scale",
            "height",
            "width",
            "num_frames",
            "max_sequence_length",
        }, name
    assert {"audio", "audio_embeds", "image_embeds", "audio_guidance_scale"} <= set(ours)
    assert list(inspect.signature(SyncDreamerPipeline.encode_prompt).parameters) == list(
        inspect.signature(WanImageToVideoPipeline.encode_prompt).parameters
    )


def test_num_videos_per_prompt_gives_batch_times_n_distinct_videos(pipe):
    output = call(pipe, prompt=["a person talks", "a person sings"], num_videos_per_prompt=2)
    assert output.frames.shape == (4, 9, 32, 32, 3)
    assert output.prompt == ["a person talks", "a person talks", "a person sings", "a person sings"]
    videos = output.frames.reshape(4, -1)
    assert all(np.abs(videos[i] - videos[j]).max() > 1e-3 for i in range(4) for j in range(i))


def test_each_video_of_a_batch_is_the_video_its_generator_gives_alone(pipe):
    """With one generator per video, video i of `num_videos_per_prompt=2` is the single video of generator i."""
    generators = [torch.Generator().manual_seed(seed) for seed in (5, 6, 7, 8)]
    batch = call(
        pipe,
        0.61,
        seed=None,
        prompt=["a person talks", "a person sings"],
        num_videos_per_prompt=2,
        generator=generators,
    )
    alone = call(pipe, 0.61, seed=7, prompt="a person sings")
    np.testing.assert_allclose(batch.frames[2], alone.frames[0], atol=1e-5)


def window_noise(pipe, num_frames: int, seed: int, batch_size: int = 1) -> torch.Tensor:
    """The initial noise of every window, drawn as the pipeline draws it from a generator seeded `seed`."""
    window_latents, starts, _ = pipe.plan_windows(
        num_frames, pipe.config.num_frames_per_window, pipe.config.num_motion_frames
    )
    window_latents += int(pipe.config.reference_sink)
    generator = torch.Generator().manual_seed(seed)
    draws = [pipe.prepare_latents(batch_size, window_latents, 32, 32, generator, "cpu") for _ in starts]
    return torch.cat(draws, dim=2)


@pytest.mark.parametrize("seconds,num_frames", [(0.36, 9), (0.61, 15)])
def test_fixed_latents_reproduce_the_generator_that_made_them(pipe, seconds, num_frames):
    from_generator = call(pipe, seconds, seed=3).frames
    latents = window_noise(pipe, num_frames, seed=3)
    np.testing.assert_array_equal(call(pipe, seconds, seed=None, latents=latents).frames, from_generator)
    np.testing.assert_array_equal(call(pipe, seconds, seed=None, latents=latents).frames, from_generator)
    assert (
        np.abs(call(pipe, seconds, seed=None, latents=window_noise(pipe, num_frames, 4)).frames - from_generator).max()
        > 1e-3
    )


def test_latents_of_the_wrong_shape_name_the_expected_one(pipe):
    with pytest.raises(ValueError, match=r"`latents` must have the shape \(1, 16, 6, 4, 4\)"):
        call(pipe, 0.61, latents=torch.randn(1, 16, 5, 4, 4))


def precomputed(pipe, seconds: float, prompt: str = "a person talks") -> dict:
    """Every embedding the encoders would compute, for a video of one window (`seconds` = 9 frames)."""
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(prompt, max_sequence_length=16, device="cpu")
    num_frames = round(seconds * FPS)
    return {
        "prompt_embeds": prompt_embeds,
        "negative_prompt_embeds": negative_prompt_embeds,
        "image_embeds": pipe.encode_image_hidden_states([PIL.Image.fromarray(REFERENCE)], "cpu"),
        "audio_embeds": pipe.encode_audio(speech(seconds), FPS, 0, num_frames, "cpu"),
    }


def test_precomputed_embeddings_run_without_any_encoder(pipe, tmp_path):
    embeds = precomputed(pipe, 0.36)
    assert embeds["audio_embeds"].shape == (1, 3, 4, AUDIO_DIM)  # the audio tokens of the 3 latent frames
    pipe.save_pretrained(tmp_path)
    bare = SyncDreamerPipeline.from_pretrained(tmp_path, **dict.fromkeys(ENCODERS))
    assert all(getattr(bare, name) is None for name in ENCODERS)
    bare.set_progress_bar_config(disable=True)
    from_embeds = call(bare, prompt=None, **embeds).frames
    np.testing.assert_allclose(from_embeds, call(pipe).frames, atol=1e-6)  # one window: the same tokens


def test_precomputed_audio_embeds_cover_the_whole_video(pipe):
    """Window w hears `audio_embeds[:, start_w : start_w + T_window]`; tokens must cover every latent frame."""
    bare = tiny_pipeline(**dict.fromkeys(("audio_encoder", "feature_extractor")))
    tokens = torch.randn(1, 5, 4, AUDIO_DIM, generator=torch.Generator().manual_seed(0))  # 15 frames: 5 latents
    first = call(bare, 0.61, audio_embeds=tokens).frames
    np.testing.assert_array_equal(call(bare, 0.61, audio_embeds=tokens).frames, first)
    changed = tokens.clone()
    changed[:, 4] += 1  # only the second window hears latent frame 4
    second = call(bare, 0.61, audio_embeds=changed).frames
    np.testing.assert_array_equal(second[:, :9], first[:, :9])  # frames 0-8 come from window 0 alone
    assert np.abs(second - first)[:, 9:].max() > 1e-4
    with pytest.raises(ValueError, match="`audio_embeds` covers 4 latent frames"):
        call(bare, 0.61, audio_embeds=tokens[:, :4])
    with pytest.raises(ValueError, match="no `audio_encoder`"):
        call(bare, 0.61)


def test_without_text_encoder_a_prompt_is_refused_and_embeds_are_enough(pipe):
    bare = tiny_pipeline(tokenizer=None, text_encoder=None)
    with pytest.raises(ValueError, match="no `text_encoder`: pass `prompt_embeds`"):
        call(bare)
    embeds = precomputed(pipe, 0.36)
    np.testing.assert_allclose(
        call(
            bare,
            prompt=None,
            prompt_embeds=embeds["prompt_embeds"],
            negative_prompt_embeds=embeds["negative_prompt_embeds"],
        ).frames,
        call(pipe).frames,
        atol=1e-6,
    )
    embeds_dtype = embeds["prompt_embeds"].to(torch.float64)
    assert bare.encode_prompt(None, prompt_embeds=embeds_dtype, negative_prompt_embeds=embeds_dtype)[0].dtype == (
        torch.float64
    )


def test_vae_none_falls_back_to_wans_scale_factors(pipe, tmp_path):
    no_vae = SyncDreamerPipeline(**{**pipe.components, "vae": None})
    assert (no_vae.vae_scale_factor_spatial, no_vae.vae_scale_factor_temporal) == (8, 4)
    pipe.save_pretrained(tmp_path)
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path, vae=None)
    assert loaded.vae is None and loaded.vae_scale_factor_temporal == 4
    embeds, _ = loaded.encode_prompt("a person talks", do_classifier_free_guidance=False, max_sequence_length=16)
    torch.testing.assert_close(embeds, pipe.encode_prompt("a person talks", max_sequence_length=16)[0])


def test_optional_component_saved_as_none_loads_as_none(pipe, tmp_path):
    assert pipe.prompt_enhancer is None and "prompt_enhancer" in pipe._optional_components
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["prompt_enhancer"] == [None, None]
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.prompt_enhancer is None
    np.testing.assert_array_equal(call(loaded).frames, call(pipe).frames)


def test_callback_on_step_end_counts_across_windows_and_can_change_the_latents(pipe):
    seen = []

    def zero_the_last_step(pipeline, step, timestep, callback_kwargs):
        seen.append((step, float(timestep), sorted(callback_kwargs)))
        last_of_window = step % 2 == 1
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if last_of_window else {}

    output = call(pipe, 0.61, output_type="latent", callback_on_step_end=zero_the_last_step)
    assert [step for step, _, _ in seen] == [0, 1, 2, 3] and pipe.num_timesteps == 4  # 2 windows x 2 steps
    assert seen[0][1] == seen[2][1] and seen[1][1] == seen[3][1]  # each window runs the whole schedule
    assert all(names == ["latents"] for _, _, names in seen)
    assert torch.count_nonzero(output.frames) == 0  # both windows' returned latents were used


def test_model_cpu_offload_gives_the_same_video():
    """`enable_model_cpu_offload` moves each model to the execution device when it runs; on CPU both devices are
    the CPU, which checks the hooks, `model_cpu_offload_seq` and the execution-device logic (the memory saving
    needs an accelerator).

    `enable_sequential_cpu_offload` cannot run on a CPU-only machine: diffusers makes the execution device
    `cpu:0`, and accelerate's per-layer hooks, moving a CPU weight "to" `cpu:0`, leave a plain tensor in place of
    the parameter, so the next move back to `meta` raises a `TypeError` inside accelerate (for every model,
    ours and the transformers encoders alike)."""
    reference = call(tiny_pipeline()).frames
    offloaded = tiny_pipeline()
    offloaded.enable_model_cpu_offload(device="cpu")
    assert offloaded._execution_device.type == "cpu"
    assert all(
        hasattr(model, "_hf_hook") for model in offloaded.components.values() if isinstance(model, torch.nn.Module)
    )
    np.testing.assert_allclose(call(offloaded).frames, reference, atol=1e-6)
