"""media.py: audio of every container/format the pipeline accepts, images of every mode, mp4 out with audio."""

import wave

import av
import numpy as np
import PIL.Image
import pytest

from syncdreamer_hf.media import load_audio, load_image, load_video, save_video


def tone(seconds: float, sample_rate: int, channels: int = 1) -> np.ndarray:
    """(channels, N) float32 440 Hz sine at amplitude 0.5."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.repeat((0.5 * np.sin(2 * np.pi * 440 * t))[None], channels, axis=0).astype(np.float32)


def write_audio(path, samples, sample_rate, codec, sample_format, container_format=None):
    """Encodes (C, N) float samples into `path` with the given codec and sample format."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        stream.format = sample_format
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T.reshape(1, -1)), format="flt", layout=layout)
        frame.sample_rate, frame.pts = sample_rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# (file name, codec, sample format, channels, rate, container)
AUDIO_CASES = [
    ("mono16k.wav", "pcm_s16le", "s16", 1, 16000, None),
    ("stereo44k.wav", "pcm_s16le", "s16", 2, 44100, None),
    ("8bit.wav", "pcm_u8", "u8", 1, 22050, None),
    ("24bit48k.wav", "pcm_s24le", "s32", 2, 48000, None),
    ("speech.mp3", "libmp3lame", "fltp", 2, 44100, None),
    ("speech.flac", "flac", "s16", 1, 48000, None),
    ("speech.ogg", "libopus", "flt", 2, 48000, "ogg"),
    ("speech.m4a", "aac", "fltp", 2, 44100, "mp4"),
]


@pytest.mark.parametrize("name,codec,sample_format,channels,rate,container_format", AUDIO_CASES)
def test_load_audio_resamples_any_container_to_16k_mono(
    tmp_path, name, codec, sample_format, channels, rate, container_format
):
    path = write_audio(tmp_path / name, tone(1.0, rate, channels), rate, codec, sample_format, container_format)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    # lossy codecs pad with encoder delay and frame padding: within 0.1 s
    assert abs(len(waveform) - 16000) <= 1600
    rms = np.sqrt(np.mean(waveform[2000:14000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_load_audio_from_array_with_rate():
    waveform = load_audio(tone(0.5, 48000, channels=2), sample_rate=48000)
    assert waveform.shape == (8000,) or abs(len(waveform) - 8000) <= 32
    assert np.sqrt(np.mean(waveform[1000:7000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    int16 = (tone(0.5, 16000)[0] * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(int16, sample_rate=16000), tone(0.5, 16000)[0], atol=1e-4)


def test_load_audio_silence_is_allowed():
    np.testing.assert_array_equal(load_audio(np.zeros(16000, np.float32), sample_rate=16000), 0)


def test_load_audio_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wav file" * 10)
    with pytest.raises(ValueError, match="could not decode"):
        load_audio(tmp_path / "corrupt.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
    with wave.open(str(tmp_path / "zero.wav"), "wb") as header_only:
        header_only.setnchannels(1), header_only.setsampwidth(2), header_only.setframerate(16000)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(tmp_path / "zero.wav")
    save_video(np.zeros((5, 16, 16, 3), np.uint8), tmp_path / "silent_film.mp4", fps=25)
    with pytest.raises(ValueError, match="no audio track"):
        load_audio(tmp_path / "silent_film.mp4")
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(np.zeros(100, np.float32))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "I;16"])
def test_load_image_converts_every_mode_to_rgb(tmp_path, mode):
    source = PIL.Image.new("RGB", (40, 30), (200, 100, 50))
    image = source.convert(mode)
    image.save(tmp_path / "ref.png")
    loaded = load_image(tmp_path / "ref.png")
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    assert load_image(image).mode == "RGB"


def test_load_image_composites_transparency_on_white():
    image = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((8, 8, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((8, 8), 0.5)).getpixel((0, 0)) == (128, 128, 128)


def test_load_image_rejects_text_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_save_video_writes_frames_and_audio_streams(tmp_path):
    fps, num_frames = 25, 33
    ramp = np.linspace(0, 1, 48, dtype=np.float32)
    frames = np.broadcast_to(ramp[None, None, :, None], (num_frames, 32, 48, 3)).copy()
    frames[:, :, :, 1] *= np.linspace(0, 1, num_frames, dtype=np.float32)[:, None, None]
    audio = tone(num_frames / fps, 16000)[0]
    path = save_video(frames, tmp_path / "out.mp4", fps=fps, audio=audio)

    with av.open(path) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, sound.codec_context.name) == ("h264", "aac")
        assert sound.sample_rate == 16000
        audio_seconds = float(sound.duration * sound.time_base)
    assert abs(audio_seconds - num_frames / fps) <= 1 / fps

    decoded, decoded_fps = load_video(path)
    assert decoded.shape == (num_frames, 32, 48, 3) and decoded_fps == fps
    # crf 18 H.264 of smooth ramps: within a few grey levels
    assert np.abs(decoded.astype(float) - frames * 255).mean() < 3


def test_save_video_keeps_fractional_fps_and_checks_sizes(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    _, fps = load_video(save_video(frames, tmp_path / "ntsc.mp4", fps=30000 / 1001))
    assert fps == pytest.approx(29.97, abs=1e-3)
    with pytest.raises(ValueError, match="even"):
        save_video(np.zeros((4, 15, 16, 3), np.uint8), tmp_path / "odd.mp4", fps=25)
