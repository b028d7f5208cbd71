"""SyncDreamerPipeline end to end on tiny random components: frame counts, windows, guidance, determinism,
save/load, LoRA, offloading, output types, and the bad-input table."""

import json

import av
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FirstBlockCacheConfig

from syncdreamer_hf.media import save_video
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline, mirrored_prompt
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

SAMPLE_RATE = 16000
FPS = 25


@pytest.fixture(scope="module")
def pipe():
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=0), **TINY_PIPELINE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with a 4 Hz syllable envelope, float32 16 kHz."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * noise * np.abs(np.sin(2 * np.pi * 4 * t))).astype(np.float32)


REFERENCE = (np.indices((40, 48)).sum(0)[..., None] * np.array([3, 2, 1]) % 256).astype(np.uint8)


def generate(pipe, audio=None, seed=0, **kwargs):
    kwargs = {
        "image": REFERENCE,
        "audio": speech(0.36) if audio is None else audio,
        "prompt": "a person talks",
        "sample_rate": SAMPLE_RATE,
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(seed),
        "max_sequence_length": 16,
        **kwargs,
    }
    return pipe(**kwargs)


@pytest.mark.parametrize("seconds,num_windows", [(0.33, 1), (0.61, 2), (0.93, 3)])
def test_frame_count_is_round_duration_times_fps(pipe, seconds, num_windows):
    steps = []
    output = generate(pipe, speech(seconds), callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    expected_frames = round(seconds * FPS)  # 8, 15, 23
    assert output.frames.shape == (1, expected_frames, 32, 32, 3)
    assert steps == list(range(2 * num_windows))  # 2 steps per window
    assert len(output.audio) == round(expected_frames / FPS * SAMPLE_RATE)
    assert 0 <= output.frames.min() and output.frames.max() <= 1


def test_windows_overlap_by_the_motion_latents(pipe):
    # 9-frame windows (3 latents), 4 motion frames (1 latent): each window adds 2 latent frames
    assert pipe.plan_windows(9, 9, 4) == (3, [0], 3)
    assert pipe.plan_windows(5, 9, 4) == (2, [0], 2)
    assert pipe.plan_windows(17, 9, 4) == (3, [0, 2], 5)
    assert pipe.plan_windows(18, 9, 4) == (3, [0, 2, 4], 6)
    assert pipe.plan_windows(81 * 10, 81, 8) == (21, [19 * w for w in range(11)], 204)


def test_motion_latents_carry_into_the_next_window(pipe):
    latents_per_window = []

    def keep_last_step(p, step, t, kw):
        if step % 2 == 1:
            latents_per_window.append(kw["latents"].clone())
        return {}

    output = generate(pipe, speech(0.61), output_type="latent", callback_on_step_end=keep_last_step)
    first, second = latents_per_window
    assert output.frames.shape == (1, 16, 5, 4, 4)
    torch.testing.assert_close(output.frames[:, :, :3], first)  # window 0 whole
    torch.testing.assert_close(output.frames[:, :, 3:], second[:, :, 1:])  # window 1 minus its carried latent


def test_same_seed_same_frames_other_seed_other_frames(pipe):
    first, again, other = (generate(pipe, seed=seed).frames for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_audio_changes_the_frames(pipe):
    base = generate(pipe, speech(0.36, seed=0)).frames
    other = generate(pipe, speech(0.36, seed=1)).frames
    silent = generate(pipe, np.zeros(5760, np.float32)).frames  # silence is allowed
    assert np.abs(base - other).max() > 1e-3 and np.abs(base - silent).max() > 1e-3


def test_reference_image_and_prompt_change_the_frames(pipe):
    base = generate(pipe).frames
    assert np.abs(base - generate(pipe, image=255 - REFERENCE).frames).max() > 1e-3
    assert np.abs(base - generate(pipe, prompt="the avatar sings").frames).max() > 1e-3


def test_guidance_combines_text_and_audio_passes(pipe):
    """noise = uncond + a * (no_text - uncond) + g * (cond - no_text): check against the three passes run
    one by one on the first step."""
    passes = {}
    transformer = pipe.transformer
    original_forward = transformer.forward

    def spy(**kwargs):
        output = original_forward(**kwargs)
        key = "silent" if kwargs["audio_embeds"] is None else "audio"
        passes.setdefault(key, (kwargs, output[0]))
        return output

    transformer.forward = spy
    try:
        generate(pipe, guidance_scale=5.0, audio_guidance_scale=3.0, num_inference_steps=1, output_type="latent")
    finally:
        del transformer.forward
    audio_kwargs, audio_out = passes["audio"]
    silent_kwargs, _ = passes["silent"]
    assert audio_kwargs["hidden_states"].shape[0] == 2  # prompt and negative prompt with audio: one batch
    cond, no_text = audio_out.chunk(2)
    torch.testing.assert_close(silent_kwargs["encoder_hidden_states"], audio_kwargs["encoder_hidden_states"][1:])
    single = transformer(**{**audio_kwargs, "hidden_states": audio_kwargs["hidden_states"][:1],
                            "timestep": audio_kwargs["timestep"][:1],
                            "encoder_hidden_states": audio_kwargs["encoder_hidden_states"][:1],
                            "identity_embeds": audio_kwargs["identity_embeds"][:1],
                            "audio_embeds": audio_kwargs["audio_embeds"][:1]})[0]
    torch.testing.assert_close(single, cond, atol=1e-5, rtol=1e-4)
    assert (cond - no_text).abs().max() > 0


def test_guidance_end_limits_text_guidance_to_the_first_steps(pipe):
    """With `guidance_end` e the first round(e * steps) steps of every window are text-guided (two prompts with audio
    in one batch), the rest run the prompt alone; 0 equals no text guidance, 1 the default."""
    batch_sizes = []
    transformer = pipe.transformer
    original_forward = transformer.forward

    def spy(**kwargs):
        if kwargs["audio_embeds"] is not None:
            batch_sizes.append(kwargs["hidden_states"].shape[0])
        return original_forward(**kwargs)

    transformer.forward = spy
    try:
        half = generate(pipe, guidance_scale=5.0, guidance_end=0.5, num_inference_steps=4, audio=speech(0.61)).frames
    finally:
        del transformer.forward
    assert batch_sizes == [2, 2, 1, 1] * 2  # two windows, each guided in its first 2 of 4 steps
    unguided = generate(pipe, guidance_scale=1.0, num_inference_steps=4, audio=speech(0.61)).frames
    np.testing.assert_array_equal(
        generate(pipe, guidance_scale=5.0, guidance_end=0.0, num_inference_steps=4, audio=speech(0.61)).frames, unguided
    )
    full = generate(pipe, guidance_scale=5.0, num_inference_steps=4, audio=speech(0.61)).frames
    np.testing.assert_array_equal(
        generate(pipe, guidance_scale=5.0, guidance_end=1.0, num_inference_steps=4, audio=speech(0.61)).frames, full
    )
    assert np.abs(half - full).max() > 1e-3 and np.abs(half - unguided).max() > 1e-3


def test_cache_hooks_start_again_in_every_window(pipe):
    """A diffusers cache hook's state (the last step's residuals) belongs to one window, which starts again at
    t = 1000: with First-Block Cache set to always reuse, the tail blocks compute once per kind of pass (with audio,
    silent) in each of the two windows."""
    last_block = pipe.transformer.blocks[-1]
    computed = []

    def spy(*args, **kwargs):
        computed.append(1)
        return type(last_block).forward(last_block, *args, **kwargs)

    last_block.forward = spy  # under the cache hook, which wraps the block's forward
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    try:
        generate(pipe, audio=speech(0.61), num_inference_steps=3, guidance_scale=5.0, audio_guidance_scale=3.0)
    finally:
        pipe.transformer.disable_cache()
        del last_block.forward
    assert len(computed) == 2 * 2


def test_output_types_and_batch_of_prompts(pipe):
    prompts = ["a person talks", "a person sings"]
    as_np = generate(pipe, prompt=prompts).frames
    assert as_np.shape == (2, 9, 32, 32, 3)
    assert np.abs(as_np[0] - as_np[1]).max() > 1e-4
    as_pt = generate(pipe, output_type="pt").frames
    assert as_pt.shape == (1, 9, 3, 32, 32)
    np.testing.assert_allclose(as_pt[0].permute(0, 2, 3, 1).numpy(), as_np[0], atol=1e-6)
    as_pil = generate(pipe, output_type="pil").frames
    assert len(as_pil[0]) == 9 and as_pil[0][0].size == (32, 32)
    frames, audio = generate(pipe, return_dict=False)
    assert frames.shape == (1, 9, 32, 32, 3) and audio.shape == (5760,)


def test_any_image_mode_and_size_is_accepted(pipe):
    for image in (PIL.Image.new("RGBA", (300, 200)), PIL.Image.new("L", (20, 20)), np.zeros((1500, 2000, 3), np.uint8)):
        assert generate(pipe, image=image).frames.shape == (1, 9, 32, 32, 3)
    assert generate(pipe, height=48, width=64).frames.shape == (1, 9, 48, 64, 3)


def test_stereo_48k_array_is_resampled(pipe):
    stereo = np.stack([speech(0.36 * 3, seed=0)] * 2)  # 16 k samples read as 48 kHz: 0.36 s
    assert generate(pipe, stereo, sample_rate=48000).frames.shape == (1, 9, 32, 32, 3)


def test_mp4_has_the_frames_and_the_audio(pipe, tmp_path):
    output = generate(pipe, speech(0.61))
    path = save_video(output.frames[0], tmp_path / "avatar.mp4", fps=FPS, audio=output.audio)
    with av.open(path) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        num_frames = sum(1 for _ in container.decode(video))
        audio_seconds = float(sound.duration * sound.time_base)
    assert num_frames == 15
    assert abs(audio_seconds - 0.61) <= 1 / FPS


def test_save_pretrained_from_pretrained_same_output(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.num_frames_per_window == 9
    np.testing.assert_array_equal(generate(pipe).frames, generate(loaded).frames)


def test_lora_saves_and_loads_through_load_lora_weights(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trained = SyncDreamerPipeline(**build_tiny_components(seed=0), **TINY_PIPELINE_CONFIG)
    trained.set_progress_bar_config(disable=True)
    base = generate(trained).frames
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    trained.transformer.add_adapter(config)
    with_lora = generate(trained).frames
    assert np.abs(with_lora - base).max() > 1e-3
    SyncDreamerPipeline.save_lora_weights(
        tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(trained.transformer)
    )

    fresh = SyncDreamerPipeline(**build_tiny_components(seed=0), **TINY_PIPELINE_CONFIG)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path / "lora", adapter_name="avatar")
    np.testing.assert_allclose(generate(fresh).frames, with_lora, atol=1e-5)
    fresh.set_adapters("avatar", 0.0)
    np.testing.assert_allclose(generate(fresh).frames, base, atol=1e-5)


def test_cpu_offload_sequence_covers_every_model(pipe):
    offloaded = pipe.model_cpu_offload_seq.split("->")
    models = {name for name, component in pipe.components.items() if isinstance(component, torch.nn.Module)}
    assert models <= set(offloaded) <= set(pipe.components)  # every model; optional ones may be absent
    assert offloaded.index("audio_encoder") < offloaded.index("transformer") < offloaded.index("vae")


BAD_INPUTS = [
    ({"height": 40}, "multiples of 16"),
    ({"width": 30}, "multiples of 16"),
    ({"num_frames": 10}, "4k \\+ 1"),
    ({"num_frames_per_window": 8}, "4k \\+ 1"),
    ({"num_motion_frames": 3}, "multiple of 4 below"),
    ({"num_motion_frames": 12}, "num_motion_frames"),
    ({"num_inference_steps": 0}, "positive integer"),
    ({"fps": 0}, "`fps` must be positive"),
    ({"fps": -25}, "`fps` must be positive"),
    ({"guidance_scale": -1.0}, ">= 0"),
    ({"audio_guidance_scale": -0.5}, ">= 0"),
    ({"output_type": "gif"}, "output_type"),
    ({"prompt": ["a", "b"], "negative_prompt": ["only one"]}, "negative_prompt"),
    ({"prompt": ["a", "b", "c"], "image": [REFERENCE, REFERENCE]}, "one per prompt"),
    ({"prompt": 3}, "string or a list"),
    ({"audio": np.zeros(100, np.float32)}, "shorter than one frame"),
    ({"audio": "missing.wav"}, "does not exist"),
    ({"image": "missing.png"}, "does not exist"),
]


def frame_by_frame_pipeline(audio_stride: int) -> SyncDreamerPipeline:
    """The tiny pipeline with a VAE without temporal compression (as SyncDreamer-Tiny's) and an audio dynamics
    encoder grouping `audio_stride` frames per latent frame."""
    from diffusers import AutoencoderKLWan

    from syncdreamer_hf import AudioDynamicsEncoder

    components = build_tiny_components(seed=0)
    components["vae"] = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[False, False, False], scale_factor_temporal=1)
    components["audio_dynamics_encoder"] = AudioDynamicsEncoder.from_config(
        components["audio_dynamics_encoder"].config, temporal_stride=audio_stride
    )
    pipe = SyncDreamerPipeline(**components, **{**TINY_PIPELINE_CONFIG, "num_frames_per_window": 5,
                                                "num_motion_frames": 2})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_vae_without_temporal_compression_windows_frame_by_frame():
    pipe = frame_by_frame_pipeline(audio_stride=1)
    steps = []
    output = generate(pipe, speech(0.44), callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    # 11 frames, any count; windows of 5 latent frames advancing by 3: starts 0, 3, 6
    assert output.frames.shape == (1, 11, 32, 32, 3)
    assert steps == list(range(2 * 3))
    with pytest.raises(ValueError, match="multiple of 1 below"):
        generate(pipe, num_motion_frames=5)


def test_audio_grouping_must_match_the_vae():
    with pytest.raises(ValueError, match="set its `temporal_stride` to 1"):
        generate(frame_by_frame_pipeline(audio_stride=4))


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS, ids=[str(k) for k, _ in BAD_INPUTS])
def test_bad_inputs_raise_value_error_naming_the_fix(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, **kwargs)


def test_text_file_as_image_and_video_without_audio_are_rejected(pipe, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        generate(pipe, image=str(tmp_path / "notes.txt"))
    save_video(np.zeros((5, 16, 16, 3), np.uint8), tmp_path / "mute.mp4", fps=FPS)
    with pytest.raises(ValueError, match="no audio track"):
        generate(pipe, audio=str(tmp_path / "mute.mp4"))


def test_sampling_defaults_come_from_the_config(pipe):
    """Steps and guidance scales left out of the call are the pipeline config's (a tiny model ships its own)."""
    configured = SyncDreamerPipeline(
        **pipe.components,
        **{**TINY_PIPELINE_CONFIG, "default_num_inference_steps": 3, "default_guidance_scale": 1.5,
           "default_audio_guidance_scale": 2.0, "default_guidance_end": 0.5},
    )
    configured.set_progress_bar_config(disable=True)
    steps = []
    kwargs = {"callback_on_step_end": lambda p, i, t, kw: steps.append(i) or {}, "num_inference_steps": None}
    implicit = generate(configured, **kwargs).frames
    assert steps == [0, 1, 2]  # one window, the configured 3 steps
    explicit = generate(pipe, num_inference_steps=3, guidance_scale=1.5, audio_guidance_scale=2.0, guidance_end=0.5).frames
    np.testing.assert_array_equal(implicit, explicit)
    assert not np.array_equal(explicit, generate(pipe, num_inference_steps=3).frames)  # 5.0 / 4.0 differ


def test_mirrored_prompt_exchanges_the_side_words_and_keeps_their_case():
    assert mirrored_prompt("raise the right hand") == "raise the left hand"
    assert mirrored_prompt("Left hand up, head to the RIGHT, left again") == "Right hand up, head to the LEFT, right again"
    assert mirrored_prompt("bright leftovers, rightly") == "bright leftovers, rightly"  # whole words only


def test_mirrored_negative_prompt_guides_away_from_the_other_side(pipe, tmp_path):
    """`mirrored_negative_prompt=True` is the same call with the mirrored prompt as the negative one, for the
    prompts that name a side; a prompt without one keeps the empty negative. The config default is saved and
    loaded, and a folder saved before the option loads with it off."""
    prompts = ["wave with the left hand", "nod"]
    mirrored = generate(pipe, prompt=prompts, mirrored_negative_prompt=True).frames
    explicit = generate(pipe, prompt=prompts, negative_prompt=["wave with the right hand", ""]).frames
    plain = generate(pipe, prompt=prompts).frames
    np.testing.assert_array_equal(mirrored, explicit)
    assert np.abs(mirrored[0] - plain[0]).max() > 1e-3
    np.testing.assert_allclose(mirrored[1], plain[1], atol=1e-6)

    SyncDreamerPipeline(**pipe.components, **TINY_PIPELINE_CONFIG, default_mirrored_negative_prompt=True).save_pretrained(
        tmp_path / "mirrored"
    )
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path / "mirrored")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded, prompt=prompts).frames, mirrored)
    np.testing.assert_array_equal(generate(loaded, prompt=prompts, mirrored_negative_prompt=False).frames, plain)
    np.testing.assert_array_equal(generate(loaded, prompt=prompts, negative_prompt=["", ""]).frames, plain)

    index = tmp_path / "mirrored" / "model_index.json"
    config = json.loads(index.read_text())
    del config["default_mirrored_negative_prompt"]
    index.write_text(json.dumps(config))
    older = SyncDreamerPipeline.from_pretrained(tmp_path / "mirrored")
    assert older.config.default_mirrored_negative_prompt is False
    with pytest.raises(ValueError, match="mirrored_negative_prompt"):
        generate(pipe, prompt=prompts, negative_prompt=["", ""], mirrored_negative_prompt=True)
