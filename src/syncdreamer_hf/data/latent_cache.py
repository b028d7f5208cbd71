"""The latent cache written by `syncdreamer preprocess` and read by the training script.

```
CACHE_DIR/
  cache_info.json              the settings (model, height, width, num_frames, fps, ...) and region names
  empty_prompt.safetensors     prompt_embeds (L, text_dim) of the empty prompt, for text dropout
  windows/<clip>_w000.safetensors   one training window (tensors below; caption etc. in the metadata)
  done/<clip>.json             the clip is finished (or failed), with the source file's size and mtime
```

A window file holds, for F = sk + 1 frames (s: the VAE's temporal compression, 4 for Wan), T = (F - 1) / s + 1
latent frames, h = H / 8, w = W / 8 (for Wan's 8x spatial compression):

- `latents (16, T, h, w)`: normalised VAE latents (mode of the posterior), as the pipeline normalises them;
  latent frame 0 is the window's first frame (the Wan VAE is causal: it equals the pipeline's `encode_reference`
  of that frame);
- `reference_latents (16, 1, h, w)`: the latent of the clip's first frame, its reference image (the pipeline's
  reference sink; caches written before it existed lack it);
- `prompt_embeds (L_tokens, text_dim)`: umT5 embeddings of the caption's tokens (the zero padding is dropped and
  restored by `collate_windows` to `max_sequence_length`);
- `image_embeds (N_img, D_img)`: the image encoder's last hidden state of the reference frame;
- `audio_hidden_states (L, N_a, D)`: every Wav2Vec2 hidden state of the window's audio, exactly what the pipeline
  feeds the audio dynamics encoder;
- `region_masks (R, T, h_tok, w_tok)` (only for clips with masks): 1 where a region touches a token of the
  transformer's grid (h_tok = h / patch) in any frame of the latent frame.

Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..atomic import atomic_write_file

CACHE_INFO_FILE = "cache_info.json"
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
WINDOWS_DIR = "windows"
DONE_DIR = "done"
CACHE_FORMAT_VERSION = 1
WINDOW_SEPARATOR = "_w"


def window_file_name(clip_stem: str, window_index: int) -> str:
    """`clip_00000`, 0 -> `clip_00000_w000.safetensors`."""
    return f"{clip_stem}{WINDOW_SEPARATOR}{window_index:03d}.safetensors"


def twin_original(window: str, twin_suffix: str) -> str:
    """The window a twin's window mirrors: `clip_00000_twin_w003` -> `clip_00000_w003` (unchanged if not a twin)."""
    clip, _, index = window.rpartition(WINDOW_SEPARATOR)
    return f"{clip.removesuffix(twin_suffix)}{WINDOW_SEPARATOR}{index}"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write_file(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def atomic_save_json(data: dict, path: Path) -> None:
    atomic_write_file(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2), encoding="utf-8"))


def read_cache_info(cache_dir) -> dict:
    path = Path(cache_dir) / CACHE_INFO_FILE
    if not path.is_file():
        raise ValueError(
            f"{str(cache_dir)!r} is not a latent cache (no {CACHE_INFO_FILE}); create one with "
            "`syncdreamer preprocess DATASET_DIR --model PIPELINE --output CACHE_DIR`."
        )
    return json.loads(path.read_text(encoding="utf-8"))


class CachedWindowDataset(Dataset):
    """The windows of a latent cache, one training sample each.

    `dataset[i]` is a dict of tensors (see the module docstring) plus `caption` (str) and `has_masks` (bool).
    `dataset.info` is `cache_info.json`; `dataset.empty_prompt_embeds` is `(L_tokens, text_dim)`.
    """

    def __init__(self, cache_dir, max_samples: int | None = None):
        self.cache_dir = Path(cache_dir)
        self.info = read_cache_info(cache_dir)
        self.files = sorted((self.cache_dir / WINDOWS_DIR).glob("*.safetensors"))
        if max_samples is not None:
            self.files = self.files[:max_samples]
        if not self.files:
            raise ValueError(f"the cache {str(cache_dir)!r} holds no windows; did preprocessing skip every clip?")
        self.empty_prompt_embeds = load_file(self.cache_dir / EMPTY_PROMPT_FILE)["prompt_embeds"]
        self.region_names = tuple(self.info["region_names"])

    def __len__(self) -> int:
        return len(self.files)

    def twin_pairs(self, twin_suffix: str) -> list[tuple[int, int]]:
        """`(i, j)` for every window j of a clip named `<clip><twin_suffix>` whose clip `<clip>` has the same window
        i (the synthetic world's side twins: `write_clip_dataset(side_twins=True)`)."""
        index = {path.stem: i for i, path in enumerate(self.files)}
        pairs = []
        for j, path in enumerate(self.files):
            i = index.get(twin_original(path.stem, twin_suffix))
            if i is not None and i != j:
                pairs.append((i, j))
        return pairs

    def __getitem__(self, index: int) -> dict:
        from safetensors import safe_open

        with safe_open(self.files[index], framework="pt") as handle:
            sample = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata() or {}
        sample["caption"] = metadata.get("caption", "")
        sample["has_masks"] = "region_masks" in sample
        sample["window"] = self.files[index].stem
        return sample


def pad_tokens(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """`(L_tokens, D)` -> `(length, D)` with zeros after the tokens (Wan's umT5 padding), truncating if longer."""
    padded = embeds.new_zeros(length, embeds.shape[-1])
    padded[: min(length, embeds.shape[0])] = embeds[:length]
    return padded


def collate_windows(samples: list[dict], max_sequence_length: int, num_regions: int) -> dict:
    """Stacks windows into a batch.

    Returns:
        `latents (B, 16, T, h, w)`, `reference_latents (B, 16, 1, h, w)` (`None` unless every window has them),
        `prompt_embeds (B, max_sequence_length, text_dim)`, `image_embeds
        (B, N_img, D_img)`, `audio_hidden_states (B, L, N_a, D)`, `region_masks (B, R, T, h_tok, w_tok)` (zeros for
        windows without masks), `has_masks (B,)` float, `captions` and `windows` (the window files' stems) lists
        of str.
    """
    latents = torch.stack([sample["latents"] for sample in samples]).float()
    batch = {
        "latents": latents,
        "prompt_embeds": torch.stack([pad_tokens(s["prompt_embeds"], max_sequence_length) for s in samples]).float(),
        "image_embeds": torch.stack([sample["image_embeds"] for sample in samples]).float(),
        "audio_hidden_states": torch.stack([sample["audio_hidden_states"] for sample in samples]).float(),
        "has_masks": torch.tensor([float(sample["has_masks"]) for sample in samples]),
        "captions": [sample["caption"] for sample in samples],
        "windows": [sample.get("window", "") for sample in samples],
        "reference_latents": (
            torch.stack([sample["reference_latents"] for sample in samples]).float()
            if all("reference_latents" in sample for sample in samples)
            else None
        ),
    }
    mask_shape = next((s["region_masks"].shape for s in samples if s["has_masks"]), None)
    if mask_shape is not None:
        batch["region_masks"] = torch.stack(
            [s["region_masks"].float() if s["has_masks"] else torch.zeros(mask_shape) for s in samples]
        )
    else:
        batch["region_masks"] = None
    if mask_shape is not None and mask_shape[0] != num_regions:
        raise ValueError(f"cached masks have {mask_shape[0]} regions, the cache info names {num_regions}.")
    return batch
