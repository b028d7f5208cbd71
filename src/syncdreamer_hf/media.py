"""Media in and out: driving audio, reference images and mp4 videos, all through PyAV and PIL.

`load_audio` turns any container FFmpeg reads (wav, mp3, flac, ogg, m4a, an mp4 with an audio track) or an
array into the 16 kHz mono float32 waveform Wav2Vec2 expects; `load_image` gives an RGB PIL image;
`save_video` writes an H.264 mp4 with the driving audio muxed in as AAC; `load_video` reads frames back.
Errors a user can cause (missing, corrupt or empty files, a video without audio) are `ValueError`s that say
what was wrong with which file.
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import torch

AUDIO_SAMPLE_RATE = 16000


def _resample(frames, sample_rate: int) -> np.ndarray:
    """Resamples decoded `av.AudioFrame`s of any format/rate to float32 at `sample_rate`, then averages the
    channels (FFmpeg's own downmix adds +3 dB to identical channels; the mean matches arrays given directly)."""
    resampler = av.AudioResampler(format="fltp", rate=sample_rate)
    chunks = []
    for frame in frames:
        frame.pts = None  # resample by sample count: container timestamps may have gaps
        chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def _decode_audio_file(path: Path, sample_rate: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"audio file {str(path)!r} does not exist; pass the path of a wav/mp3/flac/ogg/m4a/mp4.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(
                    f"{str(path)!r} has no audio track; pass a file with speech in it (wav, mp3, flac, ogg, m4a, "
                    "or a video with an audio track)."
                )
            return _resample(container.decode(container.streams.audio[0]), sample_rate)
    except av.FFmpegError as error:
        raise ValueError(
            f"could not decode audio file {str(path)!r} ({error.strerror or type(error).__name__}); "
            "pass a valid wav/mp3/flac/ogg/m4a file or a video with an audio track."
        ) from None


def _array_to_mono(audio) -> np.ndarray:
    """(N,), (C, N) or (N, C) int or float samples -> (N,) float32 in [-1, 1] (channels averaged)."""
    audio = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise ValueError(f"`audio` array must have shape (samples,) or (channels, samples); got {audio.shape}.")
    if np.issubdtype(audio.dtype, np.integer):
        info = np.iinfo(audio.dtype)
        audio = (audio.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    if audio.ndim == 2:
        channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
        audio = audio.mean(axis=channel_axis)
    return audio.astype(np.float32)


def load_audio(audio, sample_rate: int | None = None, target_sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Loads driving audio as a mono float32 waveform at `target_sample_rate` (16 kHz for Wav2Vec2).

    Args:
        audio: a path (str or Path) to any file PyAV reads (wav, mp3, flac, ogg, m4a, mp4 with an audio track),
            or an array / tensor of samples, shape (N,), (C, N) or (N, C), float in [-1, 1] or integer PCM.
        sample_rate: the sample rate of `audio` when it is an array; ignored for paths.
        target_sample_rate: the rate of the returned waveform.

    Returns:
        np.ndarray (N',) float32. Silence is allowed; an empty file is a `ValueError`.
    """
    if isinstance(audio, (str, Path)):
        waveform = _decode_audio_file(Path(audio), target_sample_rate)
        if waveform.size == 0:
            raise ValueError(f"audio file {str(audio)!r} contains no samples; pass a non-empty audio file.")
        return waveform
    if not isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):
        raise TypeError(f"`audio` must be a path or an array of samples; got {type(audio).__name__}.")
    if sample_rate is None or sample_rate <= 0:
        raise ValueError("`sample_rate` (a positive int, e.g. 16000) is required when `audio` is an array.")
    waveform = _array_to_mono(audio)
    if sample_rate == target_sample_rate:
        return waveform
    frame = av.AudioFrame.from_ndarray(waveform[None], format="fltp", layout="mono")
    frame.sample_rate = int(sample_rate)
    return _resample([frame], target_sample_rate)


def load_image(image) -> PIL.Image.Image:
    """Loads a reference image as RGB; transparent pixels are composited onto white.

    Args:
        image: a path, a PIL image, or an array (H, W), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1].
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise ValueError(f"image file {str(image)!r} does not exist; pass the path of a png/jpg/webp image.")
        try:
            with PIL.Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except (PIL.UnidentifiedImageError, OSError):
            raise ValueError(f"{str(image)!r} is not an image PIL can read; pass a png/jpg/webp file.") from None
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"image array must have shape (H, W), (H, W, 3) or (H, W, 4); got {array.shape}.")
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        image = PIL.Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`image` must be a path, a PIL image or an array; got {type(image).__name__}.")

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_video(path) -> tuple[np.ndarray, float]:
    """Reads every frame of a video file. Returns (frames uint8 (F, H, W, 3), fps)."""
    if not Path(path).is_file():
        raise ValueError(f"video file {str(path)!r} does not exist.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video track.")
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except av.FFmpegError as error:
        raise ValueError(f"could not decode video file {str(path)!r} ({error.strerror or error}).") from None
    if not frames:
        raise ValueError(f"video file {str(path)!r} contains no frames.")
    return np.stack(frames), fps


def _frames_to_uint8(frames) -> np.ndarray:
    """list of PIL images | (F, H, W, 3) uint8 array | float array/tensor in [0, 1] -> (F, H, W, 3) uint8."""
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], PIL.Image.Image):
        return np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
    frames = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must have shape (F, H, W, 3); got {frames.shape}.")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def save_video(frames, path, fps: float, audio=None, sample_rate: int = AUDIO_SAMPLE_RATE) -> str:
    """Writes an mp4: H.264 (yuv420p) video and, when `audio` is given, AAC audio muxed in.

    Args:
        frames: list of PIL images, (F, H, W, 3) uint8 array, or float array/tensor in [0, 1] (a pipeline's
            `output_type="np"`/`"pt"` frames of one video). H and W must be even (H.264 4:2:0).
        path: the output file (.mp4).
        fps: frames per second; fractional rates such as 30000/1001 are kept exactly.
        audio: optional waveform (N,) or (C, N), mono is written as mono; or a path, loaded with `load_audio`.
        sample_rate: the rate of `audio` when it is an array.

    Returns:
        `path` as a string.
    """
    frames = _frames_to_uint8(frames)
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 needs even frame sizes; got {height}x{width}. Crop or resize the frames.")
    if fps <= 0:
        raise ValueError(f"`fps` must be positive; got {fps}.")
    if audio is not None:
        waveform = load_audio(audio, sample_rate, target_sample_rate=sample_rate)
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    with av.open(str(path), mode="w", format="mp4") as container:
        video_stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
        video_stream.options = {"crf": "18"}
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")

        for frame in frames:
            container.mux(video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video_stream.encode())

        if audio is not None and waveform.size:
            audio_frame = av.AudioFrame.from_ndarray(waveform[None], format="flt", layout="mono")
            audio_frame.sample_rate, audio_frame.pts = sample_rate, 0
            container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode())
    return str(path)
