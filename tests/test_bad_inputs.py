"""Every bad input at the public boundary gives a clear error that names the argument, and leaves no file behind.

The table has one row per case: the call (the pipeline, the media functions, the clip-dataset loader, or the
`syncdreamer` command in this process), the error type, and words the message must hold (the argument and the
fix). After each row no file (output or temporary) is left in the row's folder. The tests below the table check
the cases whose fix is a correct result rather than an error (EXIF, 16-bit images, cut-short audio, 0 vs None,
heavy requests, atomic and concurrent writes), and a few rows again through a real `syncdreamer` process.
"""

import contextlib
import io
import json
import logging
import math
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from syncdreamer_hf import cli
from syncdreamer_hf.atomic import atomic_write_text
from syncdreamer_hf.data.clip_dataset import load_clip_metadata
from syncdreamer_hf.media import load_audio, load_image, load_video, save_video
from syncdreamer_hf.pipeline_syncdreamer import HEAVY_TOKENS_PER_WINDOW, SyncDreamerPipeline

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "pipelines" / "syncdreamer-tiny-random"
SAMPLE_RATE, FPS = 16000, 25
SPEECH = (0.3 * np.sin(np.arange(round(0.36 * SAMPLE_RATE)) / 7)).astype(np.float32)
REFERENCE = np.full((32, 32, 3), 128, np.uint8)
FRAMES = np.zeros((3, 16, 16, 3), np.uint8)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, declared_samples: int | None = None):
    """A mono WAV of float32 (IEEE float) or int16 samples; the header may promise `declared_samples`."""
    is_float = samples.dtype == np.float32
    data = samples.astype("<f4" if is_float else "<i2").tobytes()
    width = 4 if is_float else 2
    declared = (len(samples) if declared_samples is None else declared_samples) * width
    fmt = struct.pack("<IHHIIHH", 16, 3 if is_float else 1, 1, sample_rate, sample_rate * width, width, 8 * width)
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + declared)
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + struct.pack("<I", declared)
        + data
    )
    return path


def png_header_only(path: Path, width: int, height: int):
    """A PNG whose header claims `width` x `height` RGB pixels (and holds none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


class TouchesMarker:
    """Unpickling this would create `marker`: torch's `weights_only` loading must refuse it instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the rows (outside the rows' folders)."""
    root = tmp_path_factory.mktemp("inputs")
    write_wav(root / "nan.wav", np.array([0.1, np.nan] * 4000, np.float32))
    (root / "folder.wav").mkdir()
    (root / "folder.png").mkdir()
    png_header_only(root / "bomb.png", 20000, 20000)
    (root / "clips").mkdir()
    (root / "clips" / "clip_00000.mp4").write_bytes(b"x")
    (root / "clips" / "metadata.jsonl").write_bytes(
        b'{"file_name": "clip_00000.mp4", "caption": "talks"}\n{"file_name": "clip_00000.mp4", "caption": "caf\xe9"}\n'
    )
    (root / "dir_clips" / "clip_00000.mp4").mkdir(parents=True)
    (root / "dir_clips" / "metadata.jsonl").write_text('{"file_name": "clip_00000.mp4", "caption": "talks"}\n')
    pickled = shutil.copytree(TINY, root / "pickle-pipeline")
    weights = pickled / "text_encoder" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(
        {**load_file(weights), "extra": TouchesMarker(root / "unpickled")}, weights.with_name("pytorch_model.bin")
    )
    weights.unlink()
    return root


@pytest.fixture(scope="module")
def pipe():
    pipe = SyncDreamerPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Env:
    pipe: SyncDreamerPipeline
    files: Path
    out: Path  # the row's own, empty folder


def generate(env: Env, **kwargs):
    kwargs = {
        "image": REFERENCE,
        "audio": SPEECH,
        "sample_rate": SAMPLE_RATE,
        "prompt": "a person talks",
        "num_inference_steps": 1,
        "max_sequence_length": 8,
        **kwargs,
    }
    return env.pipe(**kwargs)


class CommandError(Exception):
    """`syncdreamer ...` exited with status 2; the message is its one stderr line."""


def run_cli(*argv) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(arg) for arg in argv])
    err = stderr.getvalue()
    if code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, err
        raise CommandError(err)
    assert code == 0, err


IMAGE, AUDIO = REPO / "examples" / "reference.png", REPO / "examples" / "speech.wav"


def cli_generate(env: Env, *args, output=None, model=TINY, image=IMAGE, audio=AUDIO, prompt="a person talks"):
    output = env.out / "out.mp4" if output is None else output
    options = {"--image": image, "--audio": audio, "--prompt": prompt, "--output": output, "--model": model}
    run_cli("generate", *[item for pair in options.items() for item in pair], "--num-inference-steps", "1", *args)


def cli_evaluate(env: Env, *args):
    options = {"--model": TINY, "--clips": 1, "--seconds": 0.2, "--size": 32, "--num-inference-steps": 1}
    run_cli("evaluate", "synthetic", *[item for pair in options.items() for item in pair], *args)


def save(env: Env, frames=FRAMES, path=None, fps=FPS, **kwargs):
    return save_video(frames, env.out / "out.mp4" if path is None else path, fps=fps, **kwargs)


@contextlib.contextmanager
def disk_full_after(limit_bytes: int):
    """Writing past `limit_bytes` of a file fails (EFBIG), as on a full disk: RLIMIT_FSIZE, with SIGXFSZ ignored."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def save_on_full_disk(env: Env):
    noise = np.random.default_rng(0).integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)  # > 20 kB of H.264
    with disk_full_after(20_000):
        save_video(noise, env.out / "out.mp4", fps=FPS, audio=SPEECH)


def make_dir(path: Path) -> Path:
    path.mkdir()
    return path


@dataclass
class Case:
    name: str
    call: object  # Env -> None, raising
    error: type
    words: tuple[str, ...]  # the message holds each (case-sensitive)


NAN, INF = float("nan"), float("inf")
CASES = [
    # sizes and counts: 0 is a value, not "use the default"
    Case("height=0", lambda e: generate(e, height=0), ValueError, ("`height`", "positive multiples of 16")),
    Case("width=0", lambda e: generate(e, width=0), ValueError, ("`width`", "positive multiples of 16")),
    Case("height=32.0", lambda e: generate(e, height=32.0), TypeError, ("`height`", "int")),
    Case("num_frames=0", lambda e: generate(e, num_frames=0), ValueError, ("`num_frames`", "4k + 1")),
    Case(
        "num_frames_per_window=0",
        lambda e: generate(e, num_frames_per_window=0),
        ValueError,
        ("`num_frames_per_window`", "4k + 1"),
    ),
    Case(
        "num_motion_frames=0",
        lambda e: generate(e, num_motion_frames=0),
        ValueError,
        ("`num_motion_frames`", "positive multiple of 4"),
    ),
    Case(
        "num_inference_steps=2.5",
        lambda e: generate(e, num_inference_steps=2.5),
        TypeError,
        ("`num_inference_steps`", "int"),
    ),
    Case(
        "num_inference_steps=0",
        lambda e: generate(e, num_inference_steps=0),
        ValueError,
        ("`num_inference_steps`", "positive"),
    ),
    # numbers that are not finite, or not numbers
    Case("fps='25'", lambda e: generate(e, fps="25"), TypeError, ("`fps`", "number")),
    Case("fps=nan", lambda e: generate(e, fps=NAN), ValueError, ("`fps`", "finite")),
    Case("fps=inf", lambda e: generate(e, fps=INF), ValueError, ("`fps`", "finite")),
    Case("fps=0", lambda e: generate(e, fps=0), ValueError, ("`fps`", "positive")),
    Case("guidance_scale=nan", lambda e: generate(e, guidance_scale=NAN), ValueError, ("`guidance_scale`", "finite")),
    Case("guidance_scale=inf", lambda e: generate(e, guidance_scale=INF), ValueError, ("`guidance_scale`", "finite")),
    Case("guidance_scale='5'", lambda e: generate(e, guidance_scale="5"), TypeError, ("`guidance_scale`", "number")),
    Case(
        "audio_guidance_scale=nan",
        lambda e: generate(e, audio_guidance_scale=NAN),
        ValueError,
        ("`audio_guidance_scale`", "finite"),
    ),
    Case("guidance_scale=-1", lambda e: generate(e, guidance_scale=-1.0), ValueError, ("`guidance_scale`", ">= 0")),
    Case("guidance_end=1.5", lambda e: generate(e, guidance_end=1.5), ValueError, ("`guidance_end`", "[0, 1]")),
    Case("guidance_end=nan", lambda e: generate(e, guidance_end=NAN), ValueError, ("`guidance_end`", "finite")),
    # audio
    Case(
        "audio NaN array",
        lambda e: generate(e, audio=np.where(np.arange(8000) % 7, 0.1, np.nan)),
        ValueError,
        ("`audio`", "NaN"),
    ),
    Case(
        "audio inf array",
        lambda e: generate(e, audio=np.full(8000, np.inf, np.float32)),
        ValueError,
        ("`audio`", "infinite"),
    ),
    Case(
        "audio file with NaN samples",
        lambda e: generate(e, audio=e.files / "nan.wav"),
        ValueError,
        ("audio file", "nan.wav", "NaN"),
    ),
    Case(
        "audio is a directory",
        lambda e: generate(e, audio=e.files / "folder.wav"),
        ValueError,
        ("audio", "is a directory", "file inside it"),
    ),
    Case(
        "audio missing", lambda e: generate(e, audio=e.files / "missing.wav"), ValueError, ("audio", "does not exist")
    ),
    Case("audio of strings", lambda e: generate(e, audio=np.array(["a", "b"])), TypeError, ("`audio`", "int or float")),
    Case("sample_rate=nan", lambda e: generate(e, sample_rate=NAN), ValueError, ("`sample_rate`", "finite")),
    Case("sample_rate=16000.5", lambda e: generate(e, sample_rate=16000.5), ValueError, ("`sample_rate`", "whole")),
    Case("sample_rate missing", lambda e: generate(e, sample_rate=None), ValueError, ("`sample_rate`", "required")),
    # images
    Case("image NaN array", lambda e: generate(e, image=np.full((32, 32, 3), np.nan)), ValueError, ("`image`", "NaN")),
    Case(
        "image int64 0..1000",
        lambda e: generate(e, image=np.full((32, 32), 1000)),
        ValueError,
        ("`image`", "uint8", "uint16"),
    ),
    Case(
        "image is a directory",
        lambda e: generate(e, image=e.files / "folder.png"),
        ValueError,
        ("image", "is a directory"),
    ),
    Case(
        "image header claims 20000x20000",
        lambda e: generate(e, image=e.files / "bomb.png"),
        ValueError,
        ("image file", "bomb.png", "too large", "MAX_IMAGE_PIXELS"),
    ),
    Case(
        "image missing", lambda e: generate(e, image=e.files / "missing.png"), ValueError, ("image", "does not exist")
    ),
    # text
    Case(
        "prompt with undecodable bytes",
        lambda e: generate(e, prompt="caf\udce9 au lait"),
        ValueError,
        ("`prompt`", "UTF-8"),
    ),
    Case(
        "negative_prompt with undecodable bytes",
        lambda e: generate(e, negative_prompt="\udcff"),
        ValueError,
        ("`negative_prompt`", "UTF-8"),
    ),
    Case("prompt=3", lambda e: generate(e, prompt=3), ValueError, ("`prompt`", "string")),
    # a request that cannot fit in memory is refused before it starts
    Case(
        "height=width=131072",
        lambda e: generate(e, height=131072, width=131072),
        ValueError,
        ("131072x131072", "GiB", "`height`", "`width`"),
    ),
    # pipeline folders
    Case(
        "pipeline with only pickle weights",
        lambda e: SyncDreamerPipeline.from_pretrained(e.files / "pickle-pipeline"),
        ValueError,
        ("text_encoder", "pickle", "safetensors", "weights_only=False"),
    ),
    # save_video and the other media functions
    Case(
        "save_video to a directory",
        lambda e: save(e, path=make_dir(e.out / "out.mp4")),
        ValueError,
        ("`path`", "is a directory"),
    ),
    Case(
        "save_video into read-only /sys",
        lambda e: save(e, path="/sys/out.mp4"),
        ValueError,
        ("`path`", "cannot be written", "folder you can write to"),
    ),
    Case(
        "save_video below a file",
        lambda e: save(e, path=Path(__file__) / "out.mp4"),
        ValueError,
        ("`path`", "is a file, not a folder"),
    ),
    Case("save_video on a full disk", save_on_full_disk, OSError, ("could not write", "out.mp4", "disk space")),
    Case("save_video []", lambda e: save(e, []), ValueError, ("`frames`", "empty")),
    Case("save_video 0 frames", lambda e: save(e, FRAMES[:0]), ValueError, ("`frames`", "empty")),
    Case("save_video NaN frames", lambda e: save(e, np.full((2, 16, 16, 3), np.nan)), ValueError, ("`frames`", "NaN")),
    Case("save_video fps=nan", lambda e: save(e, fps=NAN), ValueError, ("`fps`", "finite")),
    Case("save_video fps='25'", lambda e: save(e, fps="25"), TypeError, ("`fps`", "number")),
    Case("save_video NaN audio", lambda e: save(e, audio=np.full(100, np.nan)), ValueError, ("`audio`", "NaN")),
    Case("save_video odd size", lambda e: save(e, np.zeros((2, 15, 16, 3), np.uint8)), ValueError, ("even",)),
    Case(
        "load_video of a directory",
        lambda e: load_video(e.files / "folder.png"),
        ValueError,
        ("video", "is a directory"),
    ),
    # the clip-dataset loader
    Case(
        "metadata.jsonl not UTF-8",
        lambda e: load_clip_metadata(e.files / "clips"),
        ValueError,
        ("metadata.jsonl", "line 2", "not UTF-8", "0xe9"),
    ),
    Case(
        "clip that is a directory",
        lambda e: load_clip_metadata(e.files / "dir_clips"),
        ValueError,
        ("line 1", "is a directory"),
    ),
    # the command line: one stderr line, exit status 2
    Case(
        "--output is a directory",
        lambda e: cli_generate(e, output=make_dir(e.out / "out.mp4")),
        CommandError,
        ("--output", "is a directory"),
    ),
    Case(
        "--output in read-only /sys",
        lambda e: cli_generate(e, output="/sys/out.mp4"),
        CommandError,
        ("--output", "cannot be written"),
    ),
    Case("--fps nan", lambda e: cli_generate(e, "--fps", "nan"), CommandError, ("--fps", "finite")),
    Case("--fps inf", lambda e: cli_generate(e, "--fps", "inf"), CommandError, ("--fps", "finite")),
    Case("--seed 2**70", lambda e: cli_generate(e, "--seed", str(2**70)), CommandError, ("--seed", "2**64 - 1")),
    Case("--device meta", lambda e: cli_generate(e, "--device", "meta"), CommandError, ("--device meta", "cpu")),
    Case("--device cuda:99", lambda e: cli_generate(e, "--device", "cuda:99"), CommandError, ("--device cuda:99",)),
    Case(
        "--prompt-enhancer missing",
        lambda e: cli_generate(e, "--prompt-enhancer", e.out / "no-enhancer"),
        CommandError,
        ("--prompt-enhancer", "no-enhancer", "not found"),
    ),
    Case(
        "--image is a directory",
        lambda e: cli_generate(e, image=e.files / "folder.png"),
        CommandError,
        ("image", "is a directory"),
    ),
    Case(
        "--audio is a directory",
        lambda e: cli_generate(e, audio=e.files / "folder.wav"),
        CommandError,
        ("audio", "is a directory"),
    ),
    Case(
        "--prompt with undecodable bytes",
        lambda e: cli_generate(e, prompt="caf\udce9"),
        CommandError,
        ("`prompt`", "UTF-8"),
    ),
    Case(
        "--model with only pickle weights",
        lambda e: cli_generate(e, model=e.files / "pickle-pipeline"),
        CommandError,
        ("pickle-pipeline", "safetensors"),
    ),
    Case(
        "--height 131072",
        lambda e: cli_generate(e, "--height", "131072", "--width", "131072"),
        CommandError,
        ("GiB", "`height`"),
    ),
    Case(
        "evaluate --seconds -1", lambda e: cli_evaluate(e, "--seconds", "-1"), CommandError, ("--seconds", "positive")
    ),
    Case(
        "evaluate --seconds nan", lambda e: cli_evaluate(e, "--seconds", "nan"), CommandError, ("--seconds", "finite")
    ),
    Case("--seed -1", lambda e: cli_generate(e, "--seed", "-1"), CommandError, ("--seed", "from 0")),
    Case("evaluate --seed -5", lambda e: cli_evaluate(e, "--seed", "-5"), CommandError, ("--seed", "from 0")),
    Case("evaluate --clips 0", lambda e: cli_evaluate(e, "--clips", "0"), CommandError, ("--clips", "at least 1")),
    Case(
        "evaluate --output is a directory",
        lambda e: cli_evaluate(e, "--output", make_dir(e.out / "r.json")),
        CommandError,
        ("--output", "is a directory"),
    ),
]
if not torch.cuda.is_available():
    CASES.append(
        Case(
            "--device cuda without CUDA",
            lambda e: cli_generate(e, "--device", "cuda"),
            CommandError,
            ("--device cuda", "--device cpu"),
        )
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_a_clear_error_and_leaves_no_file(pipe, files, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(case.error) as error:
        case.call(Env(pipe, files, out))
    message = str(error.value)
    assert all(word in message for word in case.words), message
    assert "\n" not in message.strip(), message
    assert [path for path in out.rglob("*") if not path.is_dir()] == []  # no output, no temporary file
    assert not (files / "unpickled").exists()  # the pickle was never run


def test_output_path_is_checked_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded the model first"))
    with pytest.raises(CommandError, match="is a directory"):
        cli_generate(Env(None, tmp_path, tmp_path), output=make_dir(tmp_path / "out.mp4"))


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo: pixels stored landscape, EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    stored = PIL.Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for upright in (load_image(tmp_path / "phone.jpg"), load_image(PIL.Image.open(tmp_path / "phone.jpg"))):
        assert upright.size == (20, 40)
        top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
        assert top[2] > 200 and top[0] < 60  # the stored left (blue) half is on top once rotated clockwise
        assert bottom[0] > 200 and bottom[2] < 60


@pytest.mark.parametrize("mode,value,expected", [("I;16", 32896, 128), ("I", 65535, 255), ("F", 0.25, 64)])
def test_wide_grayscale_images_keep_their_tones(tmp_path, mode, value, expected):
    image = PIL.Image.new(mode, (8, 6), value)
    assert load_image(image).getpixel((3, 3)) == (expected,) * 3
    if mode == "I;16":  # a 16-bit PNG, as saved by scanners and HDR tools
        image.save(tmp_path / "gray16.png")
        assert PIL.Image.open(tmp_path / "gray16.png").mode == "I;16"
        assert load_image(tmp_path / "gray16.png").getpixel((3, 3)) == (128, 128, 128)


def test_uint16_and_bool_arrays_are_scaled():
    assert load_image(np.full((4, 4, 3), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((4, 4), 32896, np.uint16)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.ones((4, 4), bool)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(torch.full((4, 4, 3), 0.5, dtype=torch.bfloat16)).getpixel((0, 0)) == (128, 128, 128)


def test_audio_cut_short_gives_frames_of_the_decoded_samples(pipe, tmp_path):
    """The header promises 2 s, the file holds 0.5625 s: round(0.5625 x 25) = 14 frames, not 50."""
    held = (0.2 * np.sin(np.arange(9000) / 5) * 32767).astype(np.int16)
    path = write_wav(tmp_path / "cut.wav", held, declared_samples=32000)
    assert len(load_audio(path)) == 9000
    output = generate(Env(pipe, tmp_path, tmp_path), audio=path, sample_rate=None)
    assert output.frames.shape[1] == round(9000 / SAMPLE_RATE * FPS) == 14


def test_flac_cut_mid_frame_keeps_what_decodes(tmp_path, caplog):
    path = tmp_path / "speech.flac"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.tile(SPEECH, 6)[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    whole = load_audio(path)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with caplog.at_level(logging.WARNING):
        waveform = load_audio(cut)
    assert 0 < len(waveform) < len(whole) and "ends in damaged data" in caplog.text
    np.testing.assert_allclose(waveform, whole[: len(waveform)], atol=1e-4)  # the decoded part is the file's audio


def test_heavy_request_warns_with_tokens_and_memory(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        small = pipe.check_memory(1, 32, 32, 9, 9, 4, 5.0, "np", "cpu")
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        heavy = pipe.check_memory(1, 4096, 4096, 9, 9, 4, 5.0, "np", "meta")  # a device of unknown memory: no refusal
    tokens = 3 * (4096 // 16) ** 2  # 3 latent frames x 256 x 256 patches
    assert tokens > HEAVY_TOKENS_PER_WINDOW and f"{tokens:,} tokens per window" in caplog.text
    assert f"{heavy / 2**30:.1f} GiB" in caplog.text and heavy > 1000 * small
    # the decoded frames alone: 9 frames x 4096 x 4096 x 3 float32, twice
    assert heavy > 9 * 4096 * 4096 * 3 * 4 * 2


def test_concurrent_writes_to_one_path_leave_one_whole_video(tmp_path):
    path = tmp_path / "same.mp4"
    videos = {0: np.zeros((6, 16, 16, 3), np.uint8), 255: np.full((9, 16, 16, 3), 255, np.uint8)}
    writers = [
        threading.Thread(target=lambda v=v: [save_video(v, path, fps=FPS) for _ in range(3)]) for v in videos.values()
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    frames, _ = load_video(path)
    value = round(frames.mean())
    assert value in videos and len(frames) == len(videos[value])  # one writer's video, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.mp4"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = save_video(FRAMES, tmp_path / "out.mp4", fps=FPS)
    before = Path(path).read_bytes()
    with pytest.raises(OSError, match="could not write"):
        save_on_full_disk(Env(None, tmp_path, tmp_path))
    assert Path(path).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    atomic_write_text(tmp_path / "results.json", json.dumps({"r": 1}))
    assert json.loads((tmp_path / "results.json").read_text()) == {"r": 1}


def test_save_pretrained_is_atomic_and_keeps_other_files(pipe, tmp_path, monkeypatch):
    target = tmp_path / "pipe"
    (target / "checkpoint-10").mkdir(parents=True)  # e.g. a training run's output folder
    (target / "notes.txt").write_text("mine")
    pipe.save_pretrained(target)
    assert (target / "model_index.json").is_file() and (target / "transformer" / "config.json").is_file()
    assert (target / "checkpoint-10").is_dir() and (target / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary folder beside it
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(pipe.vae), "save_pretrained", fail)  # fails after some components are written
    with pytest.raises(OSError, match="No space left"):
        pipe.save_pretrained(target)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    pipe.save_pretrained(fresh)
    reloaded = SyncDreamerPipeline.from_pretrained(fresh)
    assert torch.equal(reloaded.transformer.proj_out.weight, pipe.transformer.proj_out.weight)


# A few rows again through a real process: argv bytes that are not UTF-8, and errors found before loading.
SUBPROCESS_ROWS = [
    (["--prompt", b"caf\xe9"], "`prompt` is not valid UTF-8"),
    (["--prompt", "hi", "--device", "meta"], "--device meta"),
    (["--prompt", "hi", "--fps", "nan"], "--fps"),
]


def test_cli_process_reports_bad_input_in_one_line(tmp_path):
    """Started together (each process spends seconds importing torch), checked one by one."""
    environment = {"OMP_NUM_THREADS": "1", "PATH": "", "HF_HUB_OFFLINE": "1"}
    processes = []
    for index, (args, _) in enumerate(SUBPROCESS_ROWS):
        options = {"--image": IMAGE, "--audio": AUDIO, "--output": tmp_path / f"o{index}.mp4", "--model": TINY}
        command = [sys.executable, "-m", "syncdreamer_hf.cli", "generate", *[str(x) for x in sum(options.items(), ())]]
        processes.append(subprocess.Popen([*command, *args], stderr=subprocess.PIPE, env=environment))
    for process, (_, words) in zip(processes, SUBPROCESS_ROWS):
        _, err = process.communicate(timeout=300)
        err = err.decode("utf-8", "replace")
        assert process.returncode == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_finite_checks_cover_numpy_scalars(pipe):
    with pytest.raises(ValueError, match="`fps` must be a finite number"):
        generate(Env(pipe, None, None), fps=np.float32(math.nan))
