"""Shared by the training tests: a tiny pipeline folder and a latent cache of random windows in its shapes."""

import json
from pathlib import Path

import torch

from syncdreamer_hf.regions import REGION_NAMES
from syncdreamer_hf.data.latent_cache import (
    CACHE_FORMAT_VERSION,
    CACHE_INFO_FILE,
    EMPTY_PROMPT_FILE,
    WINDOWS_DIR,
    atomic_save_tensors,
    window_file_name,
)

# 9 frames of 32x32 at 25 fps -> latents (16, 3, 4, 4), token grid (3, 2, 2); tiny.py widths.
NUM_FRAMES, HEIGHT, WIDTH, FPS = 9, 32, 32, 25
TEXT_DIM, IMAGE_TOKENS, IMAGE_DIM, AUDIO_LAYERS, AUDIO_STEPS, AUDIO_DIM = 32, 17, 32, 3, 17, 32
MAX_SEQUENCE_LENGTH = 16


def save_tiny_pipeline(directory: Path, seed: int = 0) -> Path:
    from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
    from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

    SyncDreamerPipeline(**build_tiny_components(seed=seed), **TINY_PIPELINE_CONFIG).save_pretrained(directory)
    return Path(directory)


def write_random_cache(
    cache_dir: Path, num_windows: int = 4, seed: int = 0, with_masks: bool = True, with_reference: bool = True
) -> Path:
    """A latent cache in the exact format `syncdreamer preprocess` writes, with random tensors; the mouth mask
    covers the lower token row, the eyes the upper, hands nothing. `with_reference=False`: a cache written before
    `reference_latents` existed."""
    generator = torch.Generator().manual_seed(seed)
    reference_generator = torch.Generator().manual_seed(seed + 1)
    cache_dir = Path(cache_dir)
    (cache_dir / WINDOWS_DIR).mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": CACHE_FORMAT_VERSION, "model": "tiny", "num_frames": NUM_FRAMES, "height": HEIGHT,
        "width": WIDTH, "fps": FPS, "max_sequence_length": MAX_SEQUENCE_LENGTH, "region_names": list(REGION_NAMES),
        "patch_size": [1, 2, 2],
    }
    (cache_dir / CACHE_INFO_FILE).write_text(json.dumps(info))
    atomic_save_tensors({"prompt_embeds": torch.randn(1, TEXT_DIM, generator=generator)}, cache_dir / EMPTY_PROMPT_FILE)
    for index in range(num_windows):
        tensors = {
            "latents": torch.randn(16, 3, 4, 4, generator=generator),
            "prompt_embeds": torch.randn(5, TEXT_DIM, generator=generator),
            "image_embeds": torch.randn(IMAGE_TOKENS, IMAGE_DIM, generator=generator),
            "audio_hidden_states": torch.randn(AUDIO_LAYERS, AUDIO_STEPS, AUDIO_DIM, generator=generator),
        }
        if with_reference:
            tensors["reference_latents"] = torch.randn(16, 1, 4, 4, generator=reference_generator)
        if with_masks:
            masks = torch.zeros(len(REGION_NAMES), 3, 2, 2, dtype=torch.uint8)
            masks[REGION_NAMES.index("eyes"), :, 0] = 1
            masks[REGION_NAMES.index("mouth"), :, 1, 0] = 1
            masks[REGION_NAMES.index("hair"), :, 0, 1] = 1
            masks[REGION_NAMES.index("jaw"), :, 1] = 1
            tensors["region_masks"] = masks
        atomic_save_tensors(tensors, cache_dir / WINDOWS_DIR / window_file_name(f"clip_{index:05d}", 0), {"caption": f"clip {index}"})
    return cache_dir
