"""Media in and out: driving audio, reference images and mp4 videos, all through PyAV and PIL.

`load_audio` turns any container FFmpeg reads (wav, mp3, flac, ogg, m4a, an mp4 with an audio track) or an
array into the 16 kHz mono float32 waveform Wav2Vec2 expects; `load_image` gives an RGB PIL image;
`save_video` writes an H.264 mp4 with the driving audio muxed in as AAC; `load_video` reads frames back.
Errors a user can cause (missing, corrupt, empty or oversized files, a directory instead of a file, NaN or
infinite samples or pixels, a video without audio, an unwritable output path) are `ValueError`s (`TypeError`s for
a wrong type) that say what was wrong with which argument or file. `require_int` / `require_finite` are the
argument checks the pipeline and the CLI share.
"""

import logging
import math
import numbers
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .atomic import check_output_file, temporary_sibling

logger = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16000
# PIL modes of more than 8 bits per sample, read as 16-bit values (PIL's own conversion clips them at 255)
WIDE_GRAYSCALE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def require_int(name: str, value) -> None:
    """`TypeError` unless `value` is an int (numpy ints too; not a bool, not a float such as 2.5)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int; got {type(value).__name__} {value!r}.")


def require_finite(name: str, value) -> None:
    """`TypeError` unless `value` is a real number (not a string, not a bool); `ValueError` for NaN or inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number; got {value}.")


def require_file(path: Path, kind: str, formats: str) -> None:
    """`ValueError` naming `kind` (`audio`, `image`, `video`) when `path` is a directory or does not exist."""
    if path.is_dir():
        raise ValueError(f"{kind} path {str(path)!r} is a directory; pass a {formats} file inside it.")
    if not path.is_file():
        raise ValueError(f"{kind} file {str(path)!r} does not exist; pass the path of a {formats} file.")


def require_finite_samples(values: np.ndarray, what: str) -> None:
    """`ValueError` naming `what` when a float array holds NaN or inf (a video of NaN frames otherwise)."""
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = ~np.isfinite(values)
        raise ValueError(
            f"{what} has {int(bad.sum())} NaN or infinite values (first at flat index {int(np.argmax(bad))}); "
            "replace them (e.g. `np.nan_to_num`) before passing it."
        )


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


def _decoded_frames(container, path: Path):
    """The frames of the first audio stream. A file that ends in damaged data (cut short: its header promises more
    samples than it holds) gives the frames before the damage, with a warning; damage before any audio raises."""
    decoded_samples = 0
    try:
        for frame in container.decode(container.streams.audio[0]):
            decoded_samples += frame.samples
            yield frame
    except av.FFmpegError as error:
        if not decoded_samples:
            raise
        logger.warning(
            f"audio file {str(path)!r} ends in damaged data ({error.strerror or type(error).__name__}); using the "
            f"{decoded_samples / frame.sample_rate:.2f} s that decode before it."
        )


def _decode_audio_file(path: Path, sample_rate: int) -> np.ndarray:
    require_file(path, "audio", "wav/mp3/flac/ogg/m4a/mp4")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(
                    f"{str(path)!r} has no audio track; pass a file with speech in it (wav, mp3, flac, ogg, m4a, "
                    "or a video with an audio track)."
                )
            waveform = _resample(_decoded_frames(container, path), sample_rate)
    except av.FFmpegError as error:
        raise ValueError(
            f"could not decode audio file {str(path)!r} ({error.strerror or type(error).__name__}); "
            "pass a valid wav/mp3/flac/ogg/m4a file or a video with an audio track."
        ) from None
    require_finite_samples(waveform, f"audio file {str(path)!r}")
    return waveform


def _to_numpy(value) -> np.ndarray:
    """A tensor (any device; floating dtypes as float32, so bfloat16 works) or an array-like -> np.ndarray."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Pixel values -> uint8: uint8 as they are, uint16 scaled to 8 bits, other integers must lie in 0..255,
    bool is 0 / 255, floats are in [0, 1] (clipped; NaN and inf refused)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return (values.astype(np.float32) / 257).round().astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(
                f"{what} holds integers from {values.min()} to {values.max()}; pass uint8 (0..255), uint16 "
                "(0..65535) or floats in [0, 1]."
            )
        return values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"{what} must hold int, bool or float values; got dtype {values.dtype}.")
    require_finite_samples(values, what)
    return (np.clip(values, 0, 1) * 255).round().astype(np.uint8)


def _array_to_mono(audio) -> np.ndarray:
    """(N,), (C, N) or (N, C) int or float samples -> (N,) float32 in [-1, 1] (channels averaged)."""
    audio = _to_numpy(audio)
    if not (np.issubdtype(audio.dtype, np.integer) or np.issubdtype(audio.dtype, np.floating)):
        raise TypeError(f"`audio` array must hold int or float samples; got dtype {audio.dtype}.")
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise ValueError(f"`audio` array must have shape (samples,) or (channels, samples); got {audio.shape}.")
    require_finite_samples(audio, "the `audio` array")
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
    if sample_rate is None:
        raise ValueError("`sample_rate` (a positive int, e.g. 16000) is required when `audio` is an array.")
    require_finite("sample_rate", sample_rate)
    if sample_rate <= 0 or sample_rate != int(sample_rate):
        raise ValueError(f"`sample_rate` must be a positive whole number of Hz (e.g. 16000); got {sample_rate}.")
    waveform = _array_to_mono(audio)
    if sample_rate == target_sample_rate:
        return waveform
    frame = av.AudioFrame.from_ndarray(waveform[None], format="fltp", layout="mono")
    frame.sample_rate = int(sample_rate)
    return _resample([frame], target_sample_rate)


def load_image(image) -> PIL.Image.Image:
    """Loads a reference image as RGB, upright; transparent pixels are composited onto white.

    Args:
        image: a path, a PIL image (any mode: 16-bit grayscale is scaled to 8 bits, mode `F` is read as [0, 1];
            an EXIF orientation, as phone photos have, is applied), or an array (H, W), (H, W, 3) or (H, W, 4):
            uint8, uint16, or float in [0, 1].
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        require_file(path, "image", "png/jpg/webp")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except PIL.Image.DecompressionBombError as error:
            raise ValueError(
                f"image file {str(path)!r} is too large to decode safely ({error}); resize it (a reference image "
                "needs no more than a few megapixels), or raise `PIL.Image.MAX_IMAGE_PIXELS` if you trust the file."
            ) from None
        except (PIL.UnidentifiedImageError, OSError):
            raise ValueError(f"{str(path)!r} is not an image PIL can read; pass a png/jpg/webp file.") from None
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        array = _to_numpy(image)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"image array must have shape (H, W), (H, W, 3) or (H, W, 4); got {array.shape}.")
        array = _to_uint8(array, "the `image` array")
        image = PIL.Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`image` must be a path, a PIL image or an array; got {type(image).__name__}.")

    image = PIL.ImageOps.exif_transpose(image)  # pixels stored sideways + an orientation tag (phone photos)
    if image.mode in WIDE_GRAYSCALE_MODES:
        image = PIL.Image.fromarray(_to_uint8(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), "`image`"))
    elif image.mode == "F":
        image = PIL.Image.fromarray(_to_uint8(np.asarray(image), "the `image` (mode F)"))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_video(path) -> tuple[np.ndarray, float]:
    """Reads every frame of a video file. Returns (frames uint8 (F, H, W, 3), fps)."""
    require_file(Path(path), "video", "mp4/mov/webm/mkv")
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
    frames = _to_numpy(frames)
    if frames.size == 0:
        raise ValueError(f"`frames` is empty (shape {frames.shape}); pass at least one frame.")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must have shape (F, H, W, 3); got {frames.shape}.")
    return _to_uint8(frames, "`frames`")


def _frame_rate(fps) -> Fraction:
    require_finite("fps", fps)
    rate = Fraction(float(fps)).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"`fps` must be positive (at least 1/1001); got {fps}.")
    return rate


def _write_error(path, error) -> OSError:
    return OSError(
        f"could not write {str(path)!r} ({getattr(error, 'strerror', None) or error}); check the free disk space and "
        "that the folder is writable. Nothing was left behind."
    )


class VideoWriter:
    """Writes an mp4 progressively, chunk by chunk: H.264 (yuv420p) video and, with `audio=True`, AAC audio muxed
    in. The file grows under a temporary name beside `path` and is renamed onto `path` by `close()` (the end of a
    `with` block); on an error (or `abort()`) the temporary file is removed and `path` is left as it was.

        with VideoWriter("avatar.mp4", fps=25) as writer:
            for window in pipe.stream(image=..., audio=..., prompt=...):
                writer.write(window.frames[0], window.audio)

    Args:
        path: the output file (.mp4); checked at once (not a directory, its folder writable).
        fps: frames per second; fractional rates such as 30000/1001 are kept exactly.
        audio: whether chunks carry audio.
        sample_rate: the rate of the audio chunks.
    """

    def __init__(self, path, fps: float, audio: bool = True, sample_rate: int = AUDIO_SAMPLE_RATE):
        self.path = check_output_file(path, "path")
        self.rate = _frame_rate(fps)
        self.sample_rate = sample_rate
        self.num_frames, self.num_samples = 0, 0
        self._has_audio = audio
        self._temporary = temporary_sibling(self.path)
        self._container = self._video_stream = self._audio_stream = None

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs even frame sizes; got {height}x{width}. Crop or resize the frames.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._temporary), mode="w", format="mp4")
        self._video_stream = self._container.add_stream("libx264", rate=self.rate)
        self._video_stream.width, self._video_stream.height, self._video_stream.pix_fmt = width, height, "yuv420p"
        self._video_stream.options = {"crf": "18"}
        if self._has_audio:
            self._audio_stream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")

    def write(self, frames, audio=None) -> None:
        """Encodes `frames` (as `save_video` takes them) and, with audio on, `audio` `(N,)` float32 at
        `sample_rate`, the span of audio these frames cover."""
        frames = _frames_to_uint8(frames)
        try:
            if self._container is None:
                self._open(*frames.shape[1:3])
            for frame in frames:
                self._container.mux(self._video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            self.num_frames += len(frames)
            if self._has_audio and audio is not None:
                waveform = load_audio(audio, self.sample_rate, target_sample_rate=self.sample_rate)
                if waveform.size:
                    audio_frame = av.AudioFrame.from_ndarray(waveform[None], format="flt", layout="mono")
                    audio_frame.sample_rate, audio_frame.pts = self.sample_rate, self.num_samples
                    self._container.mux(self._audio_stream.encode(audio_frame))
                    self.num_samples += waveform.size
        except (OSError, av.FFmpegError) as error:
            self.abort()
            raise _write_error(self.path, error) from error
        except BaseException:
            self.abort()
            raise

    def close(self) -> str:
        """Flushes the encoders and renames the file onto `path`; returns `path` as a string."""
        if self._container is None:
            raise ValueError("no frames were written; pass at least one frame to `write` before closing.")
        try:
            self._container.mux(self._video_stream.encode())
            if self._audio_stream is not None:
                self._container.mux(self._audio_stream.encode())
            self._container.close()
            os.replace(self._temporary, self.path)
        except (OSError, av.FFmpegError) as error:
            self.abort()
            raise _write_error(self.path, error) from error
        self._container = None
        return str(self.path)

    def abort(self) -> None:
        """Stops writing and removes the temporary file; `path` keeps its previous content (or stays absent)."""
        if self._container is not None:
            try:
                self._container.close()
            except (OSError, av.FFmpegError):
                pass
            self._container = None
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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

    The mp4 is written to a temporary name beside `path` and renamed at the end: a failed write (a full disk)
    leaves nothing behind, and of two writers of one path the last to finish wins, whole.

    Raises:
        ValueError / TypeError: bad frames, fps or audio, or a `path` that is a directory or not writable (found
            before anything is encoded). OSError: the write itself failed.
    """
    writer = VideoWriter(path, fps, audio=audio is not None, sample_rate=sample_rate)
    waveform = None if audio is None else load_audio(audio, sample_rate, target_sample_rate=sample_rate)
    writer.write(frames, waveform)
    return writer.close()
