"""`syncdreamer preprocess DATASET_DIR --model PIPELINE --output CACHE_DIR`: a clip folder -> latent cache.

For each clip of a clip dataset (see `clip_dataset.py`): decode the video (PyAV) and resample it to `--fps`,
resize and centre-crop to `--height` x `--width`, cut windows of `--num-frames` = sk + 1 frames (s: the VAE's temporal compression, 4 for Wan), and cache per
window what training needs (see `latent_cache.py`): VAE latents, umT5 embeddings of the caption (and once, of
the empty prompt), the Wav2Vec2 hidden states of the window's audio, the image-encoder states of the reference
(first) frame, and the region masks at the transformer's token grid.

The run is resumable: a clip whose `done/<clip>.json` marker matches the source file (size, mtime) and the
settings is skipped, so a rerun does no new work. Every file is written atomically. A clip that cannot be read
(corrupt, no audio, too short) is reported, marked as failed and skipped; it never stops the run. Change the
clip file and the next run tries it again.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..regions import REGION_NAMES
from .clip_dataset import load_clip_metadata
from .latent_cache import (
    CACHE_FORMAT_VERSION,
    CACHE_INFO_FILE,
    DONE_DIR,
    EMPTY_PROMPT_FILE,
    WINDOWS_DIR,
    atomic_save_json,
    atomic_save_tensors,
    window_file_name,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dataset_dir", help="folder of mp4 clips with a metadata.jsonl")
    parser.add_argument("--model", required=True, help="SyncDreamer pipeline folder or Hub repo id (its encoders)")
    parser.add_argument("--output", required=True, help="cache folder to write (resumable)")
    parser.add_argument("--height", type=int, default=480, help="multiple of 16 (default: %(default)s)")
    parser.add_argument("--width", type=int, default=832, help="multiple of 16 (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=81, help="frames per window, 4k+1 for Wan's VAE (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0, help="clips are resampled to this rate (default: %(default)s)")
    parser.add_argument("--window-stride", type=int, default=None, help="frames between window starts (default: --num-frames)")
    parser.add_argument("--max-windows-per-clip", type=int, default=None)
    parser.add_argument("--caption-column", default="caption", help="metadata field embedded as the text (caption, prompt, enhanced_caption)")
    parser.add_argument("--max-sequence-length", type=int, default=512, help="umT5 tokens (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="encoders' dtype")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `preprocess` to the `syncdreamer` command's subparsers."""
    parser = subparsers.add_parser("preprocess", help="clip folder -> latent cache for training_scripts/train_syncdreamer.py")
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> dict:
    """Runs `preprocess_dataset` from parsed arguments and prints the summary."""
    summary = preprocess_dataset(
        args.dataset_dir, args.model, args.output, height=args.height, width=args.width, num_frames=args.num_frames,
        fps=args.fps, window_stride=args.window_stride, max_windows_per_clip=args.max_windows_per_clip,
        caption_column=args.caption_column, max_sequence_length=args.max_sequence_length, device=args.device,
        dtype=args.dtype,
    )
    print(
        f"preprocess: {summary['processed']} clips processed ({summary['windows']} windows), {summary['skipped']} "
        f"already done, {len(summary['failed'])} failed -> {args.output}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="syncdreamer preprocess", description=__doc__.splitlines()[0])).parse_args(argv)
    try:
        run(args)
    except ValueError as error:
        print(f"syncdreamer preprocess: error: {error}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Frames and masks


def resample_indices(num_source_frames: int, source_fps: float, fps: float) -> np.ndarray:
    """Source frame index of each output frame at `fps` (nearest earlier frame), covering the clip's duration."""
    num_frames = int(np.floor(num_source_frames / source_fps * fps + 1e-6))
    return np.minimum(np.floor(np.arange(num_frames) * source_fps / fps + 1e-6).astype(int), num_source_frames - 1)


def resize_and_crop(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(R, F, H0, W0)` masks -> `(R, F, height, width)`: scaled (nearest) to cover the target, then centre-cropped,
    the geometry `SyncDreamerPipeline.preprocess_frames` gives the frames."""
    source_height, source_width = masks.shape[-2:]
    scale = max(height / source_height, width / source_width)
    resized_size = (max(height, round(source_height * scale)), max(width, round(source_width * scale)))
    masks = F.interpolate(masks, size=resized_size, mode="nearest")
    top, left = (resized_size[0] - height) // 2, (resized_size[1] - width) // 2
    return masks[..., top : top + height, left : left + width]


def masks_to_token_grid(masks: torch.Tensor, token_grid: tuple[int, int, int], temporal_stride: int = 4) -> torch.Tensor:
    """`(R, F, H, W)` pixel masks -> `(R, T, h_tok, w_tok)` uint8: 1 where the region touches the token's pixels in
    any video frame of the latent frame (latent frame 0 = frame 0, latent frame j = frames sj-s+1..sj for the VAE's
    temporal compression s = `temporal_stride`)."""
    num_latent_frames, token_height, token_width = token_grid
    masks = masks.float()
    padded = torch.cat([masks[:, :1].expand(-1, temporal_stride - 1, -1, -1), masks], dim=1)  # (R, sT, H, W)
    kernel = (temporal_stride, masks.shape[2] // token_height, masks.shape[3] // token_width)
    pooled = F.max_pool3d(padded.unsqueeze(0), kernel_size=kernel, stride=kernel)[0]
    return (pooled[:, :num_latent_frames] > 0).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Encoders (the pipeline's components)


def caption_embeds(pipe, caption: str, max_sequence_length: int) -> torch.Tensor:
    """umT5 embeddings `(L_tokens, text_dim)` of the caption's tokens; the pipeline's zero padding is dropped
    (the cached dataset pads back to `max_sequence_length`)."""
    embeds, _ = pipe.encode_prompt(
        caption, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=pipe.device
    )
    embeds = embeds[0]
    nonzero = embeds.abs().sum(dim=-1).nonzero()
    length = int(nonzero[-1]) + 1 if len(nonzero) else 1
    return embeds[:length]


def load_pipeline(model: str, device: str, dtype: str):
    """The pipeline with only the frozen encoders preprocessing runs (tokenizer, umT5, VAE, image encoder,
    Wav2Vec2 and their processors): the transformer, the visual adapter, the audio dynamics encoder and the prompt
    enhancer are not loaded."""
    from ..pipeline_syncdreamer import SyncDreamerPipeline

    pipe = SyncDreamerPipeline.from_pretrained(
        model, dtype=getattr(torch, dtype), transformer=None, visual_adapter=None, audio_dynamics_encoder=None,
        prompt_enhancer=None,
    )
    return pipe.to(device)


def transformer_patch_size(model: str) -> list[int]:
    """The transformer's `patch_size`, read from its config.json (it sets the token grid of the region masks)."""
    from ..models.transformer_syncdreamer import SyncDreamerTransformer3DModel

    return list(SyncDreamerTransformer3DModel.load_config(model, subfolder="transformer")["patch_size"])


# ---------------------------------------------------------------------------------------------------------------
# The run


def source_signature(record: dict) -> dict:
    """What identifies the source files of a clip: if any changes, the clip is processed again."""
    signature = {}
    for field in ("video_path", "masks_path"):
        if record.get(field):
            stat = Path(record[field]).stat()
            signature[field] = [stat.st_size, stat.st_mtime_ns]
    return signature


def window_starts(num_frames_available: int, num_frames: int, stride: int, max_windows: int | None) -> list[int]:
    starts = list(range(0, num_frames_available - num_frames + 1, stride))
    return starts[:max_windows] if max_windows is not None else starts


def process_clip(pipe, record: dict, settings: dict, output_dir: Path) -> list[str]:
    """Writes the windows of one clip; returns their file names. Raises ValueError for an unusable clip."""
    from ..media import load_audio, load_video

    height, width, num_frames, fps = settings["height"], settings["width"], settings["num_frames"], settings["fps"]
    caption = record.get(settings["caption_column"]) or record["caption"]

    frames, source_fps = load_video(record["video_path"])
    if source_fps <= 0:
        raise ValueError("the video stream has no frame rate")
    indices = resample_indices(len(frames), source_fps, fps)
    starts = window_starts(len(indices), num_frames, settings["window_stride"], settings["max_windows_per_clip"])
    if not starts:
        raise ValueError(f"{len(indices)} frames at {fps:g} fps, fewer than one window of {num_frames}")
    waveform = load_audio(record["video_path"])

    region_masks = None
    if record.get("masks_path"):
        with np.load(record["masks_path"]) as stored:
            missing = [name for name in REGION_NAMES if name not in stored]
            if missing:
                raise ValueError(f"masks file lacks regions {missing}")
            masks = torch.from_numpy(np.stack([stored[name][indices] for name in REGION_NAMES]).astype(np.float32))
        if masks.shape[2:] != frames.shape[1:3]:
            raise ValueError(f"masks are {tuple(masks.shape[2:])}, the video {frames.shape[1:3]}")
        region_masks = resize_and_crop(masks, height, width)  # (R, F, H, W)

    prompt_embeds = caption_embeds(pipe, caption, settings["max_sequence_length"])
    patch_size = settings["patch_size"]
    scale = pipe.vae_scale_factor_spatial
    stride = pipe.vae_scale_factor_temporal
    token_grid = ((num_frames - 1) // stride + 1, height // scale // patch_size[1], width // scale // patch_size[2])
    stem = Path(record["file_name"]).with_suffix("").as_posix().replace("/", "__")
    # the clip's first frame is its reference image: the latent of the pipeline's reference sink
    reference = [PIL.Image.fromarray(frames[indices[0]])]
    reference_latents = pipe.encode_video(pipe.preprocess_frames(reference, height, width))[0]
    written = []
    for window_index, start in enumerate(starts):
        # the pipeline's own preprocessing and frozen encoders, so training sees what inference feeds the model
        window = [PIL.Image.fromarray(frame) for frame in frames[indices[start : start + num_frames]]]
        tensors = {
            "latents": pipe.encode_video(pipe.preprocess_frames(window, height, width))[0],
            "reference_latents": reference_latents,
            "prompt_embeds": prompt_embeds,
            "image_embeds": pipe.encode_image_hidden_states(window[:1], pipe.device)[0],
            "audio_hidden_states": pipe.encode_audio_hidden_states(waveform, fps, int(start), num_frames, pipe.device)[0],
        }
        if region_masks is not None:
            tensors["region_masks"] = masks_to_token_grid(region_masks[:, start : start + num_frames], token_grid, stride)
        name = window_file_name(stem, window_index)
        metadata = {"caption": caption, "file_name": record["file_name"], "first_frame": str(int(start))}
        tensors = {key: value if key == "region_masks" else value.float() for key, value in tensors.items()}
        atomic_save_tensors(tensors, output_dir / WINDOWS_DIR / name, metadata)
        written.append(name)
    return written


def preprocess_dataset(
    dataset_dir,
    model,
    output_dir,
    height: int = 480,
    width: int = 832,
    num_frames: int = 81,
    fps: float = 25.0,
    window_stride: int | None = None,
    max_windows_per_clip: int | None = None,
    caption_column: str = "caption",
    max_sequence_length: int = 512,
    device: str = "cpu",
    dtype: str = "float32",
    pipe=None,
) -> dict:
    """Writes the latent cache of a clip dataset (see the module docstring).

    Args:
        model: a pipeline folder / Hub id: its encoders are used (unless `pipe` is given) and its transformer's
            config.json gives the patch size.
        pipe: an already loaded `SyncDreamerPipeline` (its transformer is not needed).

    Returns:
        `{"processed": n, "windows": n, "skipped": n, "failed": [(file_name, reason), ...]}`: `skipped` counts clips
        already done (or failed) in an earlier run with unchanged files and settings.
    """
    from tqdm.auto import tqdm

    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise ValueError(f"--height and --width must be positive multiples of 16; got {height}x{width}.")
    if num_frames < 1:
        raise ValueError(f"--num-frames must be positive; got {num_frames}.")
    if fps <= 0:
        raise ValueError(f"--fps must be positive; got {fps}.")
    records = load_clip_metadata(dataset_dir)
    output_dir = Path(output_dir)
    settings = {
        "format_version": CACHE_FORMAT_VERSION, "model": str(model), "height": height, "width": width,
        "num_frames": num_frames, "fps": fps, "window_stride": window_stride or num_frames,
        "max_windows_per_clip": max_windows_per_clip, "caption_column": caption_column,
        "max_sequence_length": max_sequence_length, "region_names": list(REGION_NAMES),
    }
    info_path = output_dir / CACHE_INFO_FILE
    if info_path.is_file():
        existing = json.loads(info_path.read_text(encoding="utf-8"))
        changed = sorted(key for key in settings if existing.get(key) != settings[key])
        if changed:
            raise ValueError(
                f"{str(output_dir)!r} was written with other settings ({', '.join(changed)}); pass the same settings "
                "to resume it, or a new --output."
            )
    todo = []
    for record in records:
        marker = output_dir / DONE_DIR / (Path(record["file_name"]).as_posix().replace("/", "__") + ".json")
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("source") == source_signature(record):
            continue
        todo.append((record, marker))
    summary = {"processed": 0, "windows": 0, "skipped": len(records) - len(todo), "failed": []}
    if not todo:
        return summary

    with torch.no_grad():
        pipe = pipe if pipe is not None else load_pipeline(str(model), device, dtype)
        settings["patch_size"] = transformer_patch_size(str(model))
        stride = pipe.vae_scale_factor_temporal
        if (num_frames - 1) % stride:
            raise ValueError(f"--num-frames must be {stride}k + 1 for this VAE ({1 + stride}, ...); got {num_frames}.")
        if not info_path.is_file():
            atomic_save_json(settings, info_path)
        if not (output_dir / EMPTY_PROMPT_FILE).is_file():
            atomic_save_tensors(
                {"prompt_embeds": caption_embeds(pipe, "", max_sequence_length).float()}, output_dir / EMPTY_PROMPT_FILE
            )
        for record, marker in tqdm(todo, desc="preprocess", unit="clip"):
            signature = source_signature(record)
            if marker.is_file():  # the clip changed since: drop the windows of the earlier run
                for name in json.loads(marker.read_text(encoding="utf-8")).get("windows", []):
                    (output_dir / WINDOWS_DIR / name).unlink(missing_ok=True)
            try:
                windows = process_clip(pipe, record, settings, output_dir)
            except (ValueError, OSError, RuntimeError, KeyError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                tqdm.write(f"preprocess: skipping {record['file_name']}: {reason}", file=sys.stderr)
                summary["failed"].append((record["file_name"], reason))
                atomic_save_json({"status": "failed", "error": reason, "source": signature}, marker)
                continue
            atomic_save_json({"status": "ok", "windows": windows, "source": signature}, marker)
            summary["processed"] += 1
            summary["windows"] += len(windows)
    return summary


if __name__ == "__main__":
    sys.exit(main())
