"""`SyncDreamerPipeline.stream`: windows handed out in order as they are denoised, each decoded once, whose frames
and audio concatenate to `__call__`'s output; `VideoWriter` and `syncdreamer generate --stream`."""

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from syncdreamer_hf.media import VideoWriter, load_video
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE, FPS = 16000, 25
REFERENCE = (np.indices((32, 32)).sum(0)[..., None] * np.array([3, 2, 1]) % 256).astype(np.uint8)
AUDIO = (0.3 * np.sin(np.arange(round(0.93 * SAMPLE_RATE)) / 40)).astype(np.float32)  # 23 frames: 3 windows


@pytest.fixture(scope="module", params=[False, True], ids=["first-window", "reference-sink"])
def pipe(request):
    pipe = SyncDreamerPipeline(
        **build_tiny_components(seed=0), **TINY_PIPELINE_CONFIG, reference_sink=request.param, motion_latent_noise=0.1
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(**kwargs):
    return {"image": REFERENCE, "audio": AUDIO, "sample_rate": SAMPLE_RATE, "prompt": "a person talks",
            "num_inference_steps": 2, "max_sequence_length": 16, "generator": torch.Generator().manual_seed(0),
            **kwargs}


@pytest.mark.parametrize("output_type", ["np", "pt", "latent"])
def test_windows_concatenate_to_the_whole_video(pipe, output_type):
    whole = pipe(**inputs(output_type=output_type))
    windows = list(pipe.stream(**inputs(output_type=output_type)))
    assert [window.window_index for window in windows] == [0, 1, 2] and windows[0].num_windows == 3
    time_axis = 2 if output_type == "latent" else 1
    joined = torch.cat([torch.as_tensor(w.frames) for w in windows], dim=time_axis)
    torch.testing.assert_close(joined, torch.as_tensor(whole.frames))
    np.testing.assert_array_equal(np.concatenate([window.audio for window in windows]), whole.audio)
    if output_type != "latent":
        counts = [window.frames.shape[1] for window in windows]
        assert sum(counts) == round(0.93 * FPS) == 23
        assert [window.first_frame for window in windows] == [0, counts[0], counts[0] + counts[1]]
        for window in windows:  # each window's audio is the span its frames cover
            start = round(window.first_frame / FPS * SAMPLE_RATE)
            assert len(window.audio) == round((window.first_frame + window.frames.shape[1]) / FPS * SAMPLE_RATE) - start


def test_each_window_is_decoded_once_and_handed_out_before_the_next_is_denoised(pipe):
    events = []
    original_decode, original_forward = pipe.vae.decode, pipe.transformer.forward
    pipe.vae.decode = lambda *args, **kwargs: events.append("decode") or original_decode(*args, **kwargs)
    pipe.transformer.forward = lambda **kwargs: events.append("denoise") or original_forward(**kwargs)
    try:
        for _ in pipe.stream(**inputs(guidance_scale=1.0, audio_guidance_scale=1.0)):
            events.append("window")
    finally:
        del pipe.vae.decode, pipe.transformer.forward
    assert events == ["denoise", "denoise", "decode", "window"] * 3


def test_a_causal_vae_decodes_later_windows_after_the_carried_latents(pipe):
    latents = pipe(**inputs(output_type="latent")).frames  # (1, 16, 7, 4, 4): 1 + 3 + 3 latents kept
    window_1 = pipe.decode_window(latents[:, :, 3:5], context_latents=latents[:, :, 2:3])
    assert window_1.shape[2] == 2 * pipe.vae_scale_factor_temporal  # 4 frames per new latent frame
    alone = pipe.decode_latents(latents[:, :, 3:5])
    assert alone.shape[2] == 1 + pipe.vae_scale_factor_temporal  # decoded alone its first latent gives 1 frame


def test_video_writer_writes_progressively_and_atomically(tmp_path):
    path = tmp_path / "out.mp4"
    frames = (np.random.default_rng(0).random((10, 32, 32, 3)) * 255).astype(np.uint8)
    with VideoWriter(path, fps=FPS) as writer:
        for chunk in range(2):
            writer.write(frames[5 * chunk : 5 * chunk + 5], np.zeros(3200, np.float32))
            assert not path.exists()  # renamed into place only at the end
    video, fps = load_video(path)
    assert video.shape == (10, 32, 32, 3) and fps == FPS
    with av.open(str(path)) as container:
        assert float(container.streams.audio[0].duration * container.streams.audio[0].time_base) == pytest.approx(0.4, abs=0.03)
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "failed.mp4", fps=FPS) as writer:
        writer.write(frames)
        raise RuntimeError("the generation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # nothing half-written left


def test_cli_stream_writes_the_mp4_and_reports_the_real_time_factor(tmp_path):
    output = tmp_path / "streamed.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "syncdreamer_hf.cli", "generate", "--model", str(REPO / "pipelines" / "syncdreamer-tiny-random"),
         "--image", str(REPO / "examples" / "reference.png"), "--audio", str(REPO / "examples" / "speech.wav"),
         "--prompt", "nod", "--num-inference-steps", "1", "--output", str(output), "--stream"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "time to first frame" in result.stdout and "real-time factor" in result.stdout
    with av.open(str(output)) as container:
        assert container.streams.video[0].frames == 100  # round(4.0 s x 25 fps)
        assert len(container.streams.audio) == 1
