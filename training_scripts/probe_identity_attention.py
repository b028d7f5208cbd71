#!/usr/bin/env python
"""Where the identity attention of a trained SyncDreamer goes: the share of every video token's attention (softmax
over the visual adapter's K queries) that lands on the `global` queries, and, for the regional queries, the mass
inside and outside their region (what the localization loss penalises), on windows of a latent cache.

    OMP_NUM_THREADS=1 python training_scripts/probe_identity_attention.py --model pipelines/syncdreamer-tiny \
        --cache_dir outputs/syncdreamer_tiny/v2/cache
"""

import argparse
import json

import torch

from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows
from syncdreamer_hf.losses import add_flow_noise, query_region_masks
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.training import SyncDreamerTrainingModule


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a SyncDreamer pipeline folder")
    parser.add_argument("--cache_dir", required=True, help="a latent cache with region masks")
    parser.add_argument("--windows", type=int, default=16, help="windows spread evenly over the cache")
    parser.add_argument("--sigma", type=float, default=0.5, help="the flow-matching noise level of the latents")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    module = SyncDreamerTrainingModule.from_pretrained(args.model).eval()
    sink = int(SyncDreamerPipeline.load_config(args.model).get("reference_sink", False))
    dataset = CachedWindowDataset(args.cache_dir)
    step = max(1, len(dataset) // args.windows)
    batch = collate_windows([dataset[i] for i in range(0, len(dataset), step)][: args.windows],
                            dataset.info["max_sequence_length"], len(dataset.region_names))
    latents = batch["latents"]  # (B, 16, T, h, w)
    if sink:
        latents = torch.cat([batch["reference_latents"], latents], dim=2)
    num_frames = latents.shape[2]
    sigmas = torch.full((latents.shape[0],), args.sigma)
    noisy = add_flow_noise(latents, torch.randn_like(latents), sigmas)
    known = latents[:, :, : sink + 1]  # the sink and the window's first frame, as in window 0
    condition = SyncDreamerPipeline.prepare_condition(known, num_frames)
    _, attention = module(torch.cat([noisy, condition], dim=1), sigmas * 1000, batch["prompt_embeds"],
                          batch["image_embeds"], batch["audio_hidden_states"], return_identity_attention=True,
                          num_sink_frames=sink)

    regions = module.visual_adapter.config.query_regions
    is_global = torch.tensor([region == "global" for region in regions])
    masks, regional = query_region_masks(batch["region_masks"], dataset.region_names, regions)  # (B, N, K')
    report = {"model": args.model, "global_query_share": is_global.float().mean().item(), "layers": []}
    for probs in attention:  # (B, (sink + T) * tokens, K)
        probs = probs[:, probs.shape[1] // num_frames * sink :]  # the sink frame is not scored
        on_regional = probs[..., regional]
        report["layers"].append({
            "mass_on_global_queries": probs[..., is_global].sum(-1).mean().item(),
            "regional_mass_inside_region": (on_regional * masks).sum(-1).mean().item(),
            "regional_mass_outside_region": (on_regional * (1 - masks)).sum(-1).mean().item(),
        })
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
