"""Does a trained SyncDreamer use its audio on the mouth and its text on the instructed regions? Measured in latent
space, so the answer does not depend on how well the VAE decodes.

On held-out cached windows (a latent cache from `syncdreamer preprocess` of held-out clips), the same noise and noise
levels are given to the transformer three times: with the window's own condition, with another window's (the batch
rolled by one: swapped), and with none (dropped, as the unconditional pass of guidance). The flow-matching error is
averaged inside a region's latent positions. A model that listens has error(swapped) > error(own) on the mouth; a
model that reads the prompt has error(swapped prompt) > error(own prompt) on the hands/eyes/jaw of windows whose
prompts differ.

    OMP_NUM_THREADS=1 python training_scripts/probe_conditioning_use.py --modules outputs/syncdreamer_tiny/run/train \
        --cache_dir outputs/syncdreamer_tiny/heldout_cache
"""

import argparse
import functools
import json

import torch
from torch.utils.data import DataLoader

from syncdreamer_hf import AudioDynamicsEncoder, SyncDreamerTransformer3DModel, SyncDreamerVisualAdapter
from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows
from syncdreamer_hf.losses import add_flow_noise, flow_matching_target, region_weight_map
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.training import SyncDreamerTrainingModule


def region_mask(region_masks, region_names, names, latent_shape) -> torch.Tensor:
    """(B, 1, T, h, w) 1 inside any of `names`, from token-grid masks."""
    return region_weight_map(region_masks, region_names, {name: 2.0 for name in names}, latent_shape) - 1.0


@torch.no_grad()
def probe(module, dataset, sigmas, seed: int, batch_size: int = 8) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=functools.partial(
        collate_windows, max_sequence_length=dataset.info["max_sequence_length"], num_regions=len(dataset.region_names)))
    sums = {}
    generator = torch.Generator().manual_seed(seed)

    def add(key, error, mask):
        total, count = sums.get(key, (0.0, 0.0))
        sums[key] = (total + float((error * mask).sum()), count + float(mask.expand_as(error).sum()))

    for batch in loader:
        latents = batch["latents"]  # (B, 16, T, h, w)
        batch_size_now, _, num_latent_frames = latents.shape[:3]
        if batch_size_now < 2:
            continue
        masks = batch["region_masks"]
        mouth = region_mask(masks, dataset.region_names, ["mouth"], latents.shape)
        instructed = region_mask(masks, dataset.region_names, ["hands", "eyes", "jaw"], latents.shape)
        captions = batch["captions"]
        differs = torch.tensor([a != b for a, b in zip(captions, captions[1:] + captions[:1])], dtype=torch.float32)
        instructed = instructed * differs.view(-1, 1, 1, 1, 1)
        condition = SyncDreamerPipeline.prepare_condition(latents[:, :, :1], num_latent_frames)
        for sigma in sigmas:
            noise = torch.randn(latents.shape, generator=generator)
            sigma_batch = torch.full((batch_size_now,), float(sigma))
            model_input = torch.cat([add_flow_noise(latents, noise, sigma_batch), condition], dim=1)
            target = flow_matching_target(latents, noise)
            audio, prompt, image = batch["audio_hidden_states"], batch["prompt_embeds"], batch["image_embeds"]
            variants = {
                "own": (prompt, audio),
                "swapped_audio": (prompt, audio.roll(1, dims=0)),
                "no_audio": (prompt, None),
                "swapped_prompt": (prompt.roll(1, dims=0), audio),
            }
            for name, (prompt_embeds, audio_hidden_states) in variants.items():
                prediction, _ = module(model_input, sigma_batch * 1000, prompt_embeds, image, audio_hidden_states)
                error = (prediction - target) ** 2
                add(f"mouth/{name}", error, mouth)
                add(f"instructed/{name}", error, instructed)
                add(f"all/{name}", error, torch.ones_like(mouth))
    means = {key: total / max(count, 1.0) for key, (total, count) in sums.items()}
    return {
        **{key: round(value, 5) for key, value in sorted(means.items())},
        "mouth_swapped_over_own": round(means["mouth/swapped_audio"] / means["mouth/own"], 4),
        "mouth_none_over_own": round(means["mouth/no_audio"] / means["mouth/own"], 4),
        "instructed_swapped_prompt_over_own": round(means["instructed/swapped_prompt"] / max(means["instructed/own"], 1e-12), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", required=True,
                        help="folders with transformer/, visual_adapter/, audio_dynamics_encoder/ (pipelines or snapshots)")
    parser.add_argument("--cache_dir", required=True, help="latent cache of held-out clips")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON lines, one per --modules folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = CachedWindowDataset(args.cache_dir)
    for folder in args.modules:
        module = SyncDreamerTrainingModule(
            SyncDreamerTransformer3DModel.from_pretrained(folder, subfolder="transformer"),
            SyncDreamerVisualAdapter.from_pretrained(folder, subfolder="visual_adapter"),
            AudioDynamicsEncoder.from_pretrained(folder, subfolder="audio_dynamics_encoder"),
        ).eval()
        result = {"modules": folder, **probe(module, dataset, args.sigmas, args.seed)}
        print(json.dumps(result), flush=True)
        if args.output:
            with open(args.output, "a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
