"""The prompt enhancer inside SyncDreamerPipeline: `enhance_prompt=True`, the output's prompt, save/load, CLI."""

import wave

import numpy as np
import PIL.Image
import pytest
import torch

from syncdreamer_hf.cli import main
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer
from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

IMAGE = np.full((32, 32, 3), (180, 40, 40), np.uint8)
AUDIO = (0.2 * np.sin(np.linspace(0, 900, 5600))).astype(np.float32)  # 0.35 s at 16 kHz


@pytest.fixture(scope="module")
def enhancer(tmp_path_factory):
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm")))
    enhancer.register_to_config(max_new_tokens=12)
    return enhancer


@pytest.fixture(scope="module")
def pipe(enhancer):
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=0), prompt_enhancer=enhancer, **TINY_PIPELINE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    arguments = dict(image=IMAGE, audio=AUDIO, sample_rate=16000, prompt="raise the right hand",
                     num_inference_steps=2, max_sequence_length=16, generator=torch.Generator().manual_seed(0))
    return pipe(**{**arguments, **kwargs})


def test_enhanced_prompt_is_returned_and_drives_the_video(pipe, enhancer):
    enhanced = generate(pipe, enhance_prompt=True)
    expected = enhancer.enhance(IMAGE, "raise the right hand")
    assert enhanced.prompt == [expected]
    # the video is exactly the one the enhanced text gives when passed as the prompt
    np.testing.assert_array_equal(enhanced.frames, generate(pipe, prompt=expected).frames)
    plain = generate(pipe)
    assert plain.prompt == ["raise the right hand"]
    if expected != "raise the right hand":
        assert np.abs(plain.frames - enhanced.frames).max() > 0


def test_enhance_prompt_without_an_enhancer_is_a_clear_error():
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=0), **TINY_PIPELINE_CONFIG)
    with pytest.raises(ValueError, match="prompt_enhancer"):
        generate(pipe, enhance_prompt=True)


def test_pipeline_with_enhancer_round_trips(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    reloaded = SyncDreamerPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded.prompt_enhancer, SyncDreamerPromptEnhancer)
    first, second = generate(pipe, enhance_prompt=True), generate(reloaded, enhance_prompt=True)
    assert first.prompt == second.prompt
    np.testing.assert_array_equal(first.frames, second.frames)


def test_cli_enhance_prompt_prints_the_instruction(pipe, enhancer, tmp_path, capsys):
    pipe_dir, enhancer_dir = tmp_path / "pipe", tmp_path / "enhancer"
    SyncDreamerPipeline(**{**pipe.components, "prompt_enhancer": None}, **TINY_PIPELINE_CONFIG).save_pretrained(pipe_dir)
    enhancer.save_pretrained(enhancer_dir)
    image, audio = tmp_path / "ref.png", tmp_path / "speech.wav"
    PIL.Image.fromarray(IMAGE).save(image)
    with wave.open(str(audio), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(16000)
        file.writeframes((AUDIO * 32767).astype(np.int16).tobytes())
    code = main(["generate", "--image", str(image), "--audio", str(audio), "--prompt", "raise the right hand",
                 "--output", str(tmp_path / "out.mp4"), "--model", str(pipe_dir), "--prompt-enhancer",
                 str(enhancer_dir), "--enhance-prompt", "--num-inference-steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"enhanced prompt: {enhancer.enhance(IMAGE, 'raise the right hand')}" in out
    assert (tmp_path / "out.mp4").stat().st_size > 0
