"""Trains a tiny `AutoencoderKLWan` (or `SyncDreamerFrameAutoencoder`) on the synthetic avatar world, for the tiny
default SyncDreamer model.

Clips of the train split are rendered on the fly (`data.synthetic.synthetic_example`, a new identity, speech and
instruction set per clip), so the VAE never sees a held-out identity. The loss is a per-pixel L1 whose weight is
raised on the renderer's mouth, eyes and hands masks (a few percent of the pixels, which a plain L1 lets the VAE
blur away), plus a small KL on the posterior. At the end `latents_mean`/`latents_std` in the config are set to
the per-channel statistics of the posterior modes on training clips, since the pipeline normalises with them.

    OMP_NUM_THREADS=1 python training_scripts/train_tiny_vae.py --output_dir outputs/tiny_vae/s4_b16 \
        --dim_mult 1 2 4 --max_train_steps 800 --checkpointing_steps 100

Resume a killed run with the same command plus `--resume`. Evaluate with `training_scripts/eval_tiny_vae.py`.
"""

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from syncdreamer_hf import SyncDreamerFrameAutoencoder
from syncdreamer_hf.data.synthetic import clip_seed, synthetic_example

WEIGHTED_REGIONS = ("mouth", "eyes", "hands")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="checkpoints, train_log.jsonl and the saved VAE")
    # Model.
    parser.add_argument("--architecture", choices=("wan", "frame"), default="wan",
                        help="wan: a tiny AutoencoderKLWan; frame: SyncDreamerFrameAutoencoder (per-frame 2D, no "
                             "temporal compression, --dim_mult levels of base_dim * mult channels)")
    parser.add_argument("--base_dim", type=int, default=16)
    parser.add_argument("--dim_mult", type=int, nargs="+", default=[1, 2, 4],
                        help="one entry per level; spatial compression is 2 ** (len - 1): 3 levels -> 4x, 4 -> 8x")
    parser.add_argument("--num_res_blocks", type=int, default=1, help="wan only")
    parser.add_argument("--z_dim", type=int, default=16)
    # Data.
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--num_frames", type=int, default=9, help="frames per training clip (4k + 1 for wan)")
    parser.add_argument("--num_train_clips", type=int, default=0,
                        help="cycle over this many clips (0: a new clip every time, the default)")
    parser.add_argument("--seed", type=int, default=0)
    # Loss.
    parser.add_argument("--region_weight", type=float, default=10.0,
                        help="extra L1 weight on the (1-pixel dilated) mouth, eyes and hands masks")
    parser.add_argument("--mse_weight", type=float, default=1.0, help="weight of a plain MSE term beside the L1")
    parser.add_argument("--kl_weight", type=float, default=1e-4, help="on the per-element mean KL")
    parser.add_argument("--posterior", choices=("sample", "mode"), default="sample",
                        help="decode a posterior sample (a VAE) or its mode (a plain autoencoder, KL on the mean only)")
    parser.add_argument("--init_logvar", type=float, default=-6.0,
                        help="initial posterior log-variance (quant_conv bias); at 0 the sampling noise drowns the "
                             "still-small means and training stalls at blobs")
    # Optimisation.
    parser.add_argument("--train_batch_size", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lr_warmup_steps", type=int, default=50)
    parser.add_argument("--max_train_steps", type=int, default=800, help="cosine decay to 10%% over these steps")
    parser.add_argument("--max_minutes", type=float, default=None,
                        help="stop (and save) after this much training wall time, even before max_train_steps")
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--checkpointing_steps", type=int, default=100)
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--stats_clips", type=int, default=32, help="training clips for latents_mean/std")
    args = parser.parse_args(argv)
    if args.architecture == "wan" and (args.num_frames - 1) % 4:
        parser.error(f"--num_frames must be 4k + 1 (the Wan VAE's temporal compression 4); got {args.num_frames}.")
    if len(args.dim_mult) < 3:
        parser.error("--dim_mult needs at least 3 levels (two temporal downsamplings for 4x temporal compression).")
    spatial = 2 ** (len(args.dim_mult) - 1)
    if args.height % (2 * spatial) or args.width % (2 * spatial):
        parser.error(f"height and width must be multiples of {2 * spatial} (VAE {spatial}x times patch 2).")
    return args


def build_vae(args) -> AutoencoderKLWan | SyncDreamerFrameAutoencoder:
    """A Wan VAE with 4x temporal compression (the last two downsamplings are 3D, as in Wan 2.1) or a per-frame
    autoencoder; 2 ** (levels - 1) spatial compression, with the `scale_factor_*` config values the pipeline reads."""
    num_down = len(args.dim_mult) - 1
    if args.architecture == "frame":
        vae = SyncDreamerFrameAutoencoder(z_dim=args.z_dim, block_out_channels=[args.base_dim * m for m in args.dim_mult],
                                          scale_factor_spatial=2**num_down)
        with torch.no_grad():  # the last encoder convolution gives (mean, logvar) along channels
            vae.encoder[-1].bias[args.z_dim:] = args.init_logvar
        return vae
    temperal_downsample = [False] * (num_down - 2) + [True, True]
    vae = AutoencoderKLWan(
        base_dim=args.base_dim, z_dim=args.z_dim, dim_mult=list(args.dim_mult), num_res_blocks=args.num_res_blocks,
        temperal_downsample=temperal_downsample, scale_factor_spatial=2**num_down, scale_factor_temporal=4,
        latents_mean=[0.0] * args.z_dim, latents_std=[1.0] * args.z_dim,
    )
    with torch.no_grad():  # quant_conv's output is (mean, logvar) along channels
        vae.quant_conv.bias[args.z_dim:] = args.init_logvar
    return vae


@torch.no_grad()
def check_scale_factors(vae: AutoencoderKLWan, num_frames: int, height: int, width: int) -> None:
    """Asserts that the config's scale factors are the compression the VAE actually does."""
    latents = vae.encode(torch.zeros(1, 3, num_frames, height, width)).latent_dist.mode()
    _, channels, latent_frames, latent_height, latent_width = latents.shape
    assert channels == vae.config.z_dim, (channels, vae.config.z_dim)
    assert latent_frames == (num_frames - 1) // vae.config.scale_factor_temporal + 1, (latents.shape, vae.config)
    assert latent_height * vae.config.scale_factor_spatial == height, (latents.shape, vae.config)
    assert latent_width * vae.config.scale_factor_spatial == width, (latents.shape, vae.config)


def render_batch(args, first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split clips `first_index ...`: pixels (B, 3, F, H, W) in [-1, 1] and the region mask (B, 1, F, H, W)
    of the mouth, eyes and hands."""
    pixels, masks = [], []
    for i in range(first_index, first_index + args.train_batch_size):
        index = i % args.num_train_clips if args.num_train_clips else i
        clip = synthetic_example(clip_seed(args.seed, "train", index), "train", seconds=args.num_frames / args.fps,
                                 fps=args.fps, height=args.height, width=args.width)
        frames = clip.frames[: args.num_frames]
        pixels.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1)  # (3, F, H, W)
        region = np.any([clip.masks[name][: args.num_frames] for name in WEIGHTED_REGIONS], axis=0)
        masks.append(torch.from_numpy(region)[None].float())  # (1, F, H, W)
    masks = torch.stack(masks)
    masks = F.max_pool3d(masks, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))  # edges count too
    return torch.stack(pixels), masks


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """`vae.decode(latents).sample` without the Wan VAE's final clamp to [-1, 1]: the clamp zeroes the gradient of
    every pixel that overshoots, and with it training stalls at coloured blobs. Latents (B, z, T, h, w) -> frames
    (B, 3, 1 + 4 (T - 1), H, W), decoded one latent frame at a time with the causal cache, as `_decode` does
    (`SyncDreamerFrameAutoencoder` does not clamp: its own `decode`)."""
    if isinstance(vae, SyncDreamerFrameAutoencoder):
        return vae.decode(latents).sample
    vae.clear_cache()
    hidden = vae.post_quant_conv(latents)
    frames = []
    for i in range(hidden.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(hidden[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def compute_loss(vae, pixels, region_mask, args, generator=None) -> dict[str, torch.Tensor]:
    """Region-weighted L1 + MSE + KL of one batch; also returns the plain L1 (the comparable learning curve)."""
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.sample(generator) if args.posterior == "sample" else posterior.mode()
    reconstruction = decode_unclamped(vae, latents)
    error = (reconstruction - pixels).abs()
    weight = 1 + args.region_weight * region_mask
    weighted_l1 = (error * weight).mean() / weight.mean()
    mse = (error**2).mean()
    if args.posterior == "sample":
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).mean()
    else:
        kl = 0.5 * (posterior.mean**2).mean()
    loss = weighted_l1 + args.mse_weight * mse + args.kl_weight * kl
    region_l1 = (error * region_mask).sum() / (3 * region_mask.sum()).clamp(min=1)
    return {"loss": loss, "l1": error.mean(), "region_l1": region_l1, "mse": mse, "kl": kl}


def lr_lambda(args):
    def schedule(step):
        if step < args.lr_warmup_steps:
            return (step + 1) / args.lr_warmup_steps
        progress = min(1.0, (step - args.lr_warmup_steps) / max(1, args.max_train_steps - args.lr_warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def save_checkpoint(output_dir: Path, step, vae, optimizer, scheduler, elapsed, limit) -> None:
    """Writes `checkpoints/checkpoint-{step}.pt` atomically and keeps the newest `limit` of them."""
    directory = output_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "elapsed": elapsed, "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
    temporary = directory / f".checkpoint-{step}.pt.tmp"
    torch.save(state, temporary)
    os.replace(temporary, directory / f"checkpoint-{step}.pt")
    for old in sorted(directory.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[:-limit]:
        old.unlink()


def latest_checkpoint(output_dir: Path) -> Path | None:
    paths = sorted((output_dir / "checkpoints").glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return paths[-1] if paths else None


@torch.no_grad()
def latent_statistics(vae, args, num_clips: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior modes of `num_clips` training clips (not the ones trained on
    first: indices start after the training stream's first million)."""
    latents = []
    for start in range(0, num_clips, args.train_batch_size):
        pixels, _ = render_batch(args, 10**6 + start)
        latents.append(vae.encode(pixels).latent_dist.mode())
    latents = torch.cat(latents).transpose(0, 1).flatten(1)  # (z_dim, N)
    return latents.mean(1).tolist(), latents.std(1).clamp(min=1e-4).tolist()


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    vae = build_vae(args)
    check_scale_factors(vae, args.num_frames, args.height, args.width)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))
    step, elapsed_before = 0, 0.0
    log_path = output_dir / "train_log.jsonl"
    if args.resume and (checkpoint := latest_checkpoint(output_dir)) is not None:
        state = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed_before = state["step"], state["elapsed"]
        print(f"resumed from {checkpoint} at step {step}")
    elif log_path.exists():
        log_path.unlink()
    num_params = sum(p.numel() for p in vae.parameters())
    print(f"{type(vae).__name__}: {num_params / 1e6:.2f}M parameters, {vae.config.scale_factor_spatial}x spatial, "
          f"{vae.config.scale_factor_temporal}x temporal, z_dim {vae.config.z_dim}")

    vae.train()
    start = time.time()
    running = {}
    while step < args.max_train_steps:
        elapsed = elapsed_before + time.time() - start
        if args.max_minutes is not None and elapsed > 60 * args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached at step {step}")
            break
        pixels, region_mask = render_batch(args, step * args.train_batch_size)
        losses = compute_loss(vae, pixels, region_mask, args)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + value.item()
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            count = step % args.logging_steps or args.logging_steps
            record = {"step": step, **{name: round(total / count, 5) for name, total in running.items()},
                      "lr": scheduler.get_last_lr()[0], "elapsed_s": round(elapsed_before + time.time() - start, 1)}
            running = {}
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        if step % args.checkpointing_steps == 0:
            save_checkpoint(output_dir, step, vae, optimizer, scheduler, elapsed_before + time.time() - start,
                            args.checkpoints_total_limit)
    elapsed = elapsed_before + time.time() - start
    save_checkpoint(output_dir, step, vae, optimizer, scheduler, elapsed, args.checkpoints_total_limit)

    vae.eval()
    latents_mean, latents_std = latent_statistics(vae, args, args.stats_clips)
    vae.register_to_config(latents_mean=latents_mean, latents_std=latents_std)
    vae_dir = output_dir / "vae"
    if vae_dir.exists():
        shutil.rmtree(vae_dir)
    vae.save_pretrained(vae_dir)
    summary = {"step": step, "train_seconds": round(elapsed, 1), "num_parameters": num_params,
               "vae_dir": str(vae_dir), "latents_mean": latents_mean, "latents_std": latents_std}
    (output_dir / "train_summary.json").write_text(json.dumps({**summary, "args": vars(args)}, indent=2))
    print(f"saved {vae_dir} after {step} steps, {elapsed / 60:.1f} min of training")
    return summary


if __name__ == "__main__":
    main()
