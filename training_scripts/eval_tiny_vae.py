"""How much of the synthetic world survives a VAE's encode -> decode, measured on held-out clips.

Each held-out clip (new identity, held-out speech and instructions) is encoded (posterior mode, normalised with
the config's latents_mean/std exactly as `SyncDreamerPipeline.encode_video` does, then denormalised as
`decode_latents` does) and decoded; the world's analyzers then read both the original and the reconstruction:

- mouth r: Pearson r of `measure_mouth_opening` on the reconstruction vs on the original (all frames pooled,
  and the mean of per-clip r as the benchmark's lip-sync r does),
- colour error: `colour_error` of `estimate_identity_colours` against the true identity colours, in /255 levels
  (the original's own error, the analyzer's floor, is printed beside it),
- PSNR (dB) of the whole frame and of the mouth region,
- instructions: how many of the motions `detect_motions` finds in the original it still finds in the
  reconstruction (raised hands separately), and how many it finds that the original does not show,
- the normalised latents' mean and std on these clips (should be near 0 and 1).

    OMP_NUM_THREADS=1 python training_scripts/eval_tiny_vae.py outputs/tiny_vae/s4_b16/vae --num_clips 16
"""

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch

from syncdreamer_hf.data.synthetic import clip_seed, synthetic_example
from syncdreamer_hf.tiny import load_vae
from syncdreamer_hf.latents import denormalize_latents, normalize_latents
from syncdreamer_hf.evaluation.synthetic import (
    analyze_video,
    colour_error,
    detect_motions,
    estimate_identity_colours,
    measure_mouth_opening,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vae_dirs", nargs="+", help="VAE folders (AutoencoderKLWan or SyncDreamerFrameAutoencoder)")
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.04, help="4.04 s at 25 fps = 101 frames (4k + 1)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json_out", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    return args


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """frames (F, H, W, 3) uint8 with F = sk + 1 (temporal compression s) -> reconstructed frames (F, H, W, 3) uint8 and the normalised
    latents (z_dim, T, h, w)."""
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
    latents = vae.encode(pixels).latent_dist.mode()
    normalised = normalize_latents(latents, vae.config)
    video = vae.decode(denormalize_latents(normalised, vae.config)).sample[:, :, : len(frames)]
    video = ((video.clamp(-1, 1) + 1) * 127.5).round().byte()
    return video[0].permute(1, 2, 3, 0).numpy(), normalised[0]


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    error = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = error[mask].mean() if mask is not None else error.mean()
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def evaluate(vae, clips) -> dict:
    mouth_original, mouth_reconstructed, mouth_truth = [], [], []
    colour_errors, colour_floor, psnrs, mouth_psnrs, latents = [], [], [], [], []
    kept, shown, extra, hands_kept, hands_shown = 0, 0, 0, 0, 0
    for clip in clips:
        reconstruction, normalised = reconstruct(vae, clip.frames)
        latents.append(normalised.flatten(1))
        mouth_original.append(measure_mouth_opening(clip.frames))
        mouth_reconstructed.append(measure_mouth_opening(reconstruction))
        mouth_truth.append(clip.motion["mouth"])
        colour_errors.append(colour_error(estimate_identity_colours(reconstruction), clip.identity.colours))
        colour_floor.append(colour_error(estimate_identity_colours(clip.frames), clip.identity.colours))
        psnrs.append(psnr(clip.frames, reconstruction))
        mouth_psnrs.append(psnr(clip.frames, reconstruction, clip.masks["mouth"]))
        original_motions = detect_motions(analyze_video(clip.frames), clip.fps)
        reconstructed_motions = detect_motions(analyze_video(reconstruction), clip.fps)
        shown += len(original_motions)
        kept += len(original_motions & reconstructed_motions)
        extra += len(reconstructed_motions - original_motions)
        raised = {name for name in original_motions if name.startswith("raise_")}
        hands_shown += len(raised)
        hands_kept += len(raised & reconstructed_motions)
    latents = torch.cat(latents, dim=1)
    per_clip_r = [pearson(r, o) for r, o in zip(mouth_reconstructed, mouth_original)]
    mouth_original, mouth_reconstructed = np.concatenate(mouth_original), np.concatenate(mouth_reconstructed)
    return {
        "mouth_r_vs_original": round(pearson(mouth_reconstructed, mouth_original), 4),
        "mouth_r_per_clip": round(float(np.mean(per_clip_r)), 4),
        "mouth_r_vs_truth": round(pearson(mouth_reconstructed, np.concatenate(mouth_truth)), 4),
        "mouth_r_original_vs_truth": round(pearson(mouth_original, np.concatenate(mouth_truth)), 4),
        "mouth_opening_mae": round(float(np.abs(mouth_reconstructed - mouth_original).mean()), 4),
        "colour_error_255": round(float(np.concatenate(colour_errors).mean() * 255), 2),
        "colour_error_original_255": round(float(np.concatenate(colour_floor).mean() * 255), 2),
        "psnr_db": round(float(np.mean(psnrs)), 2),
        "mouth_psnr_db": round(float(np.mean(mouth_psnrs)), 2),
        "motions_kept": f"{kept}/{shown}",
        "motions_spurious": extra,
        "raised_hands_kept": f"{hands_kept}/{hands_shown}",
        "normalised_latent_mean": round(latents.mean().item(), 3),
        "normalised_latent_std": round(latents.std().item(), 3),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    command = "OMP_NUM_THREADS=1 python " + shlex.join(["training_scripts/eval_tiny_vae.py", *(argv or sys.argv[1:])])
    clips = [synthetic_example(clip_seed(args.seed, "heldout", i), "heldout", args.seconds, args.fps, args.height,
                               args.width) for i in range(args.num_clips)]
    results = {}
    for vae_dir in args.vae_dirs:
        vae = load_vae(vae_dir).eval()
        if (len(clips[0].frames) - 1) % vae.config.scale_factor_temporal:
            raise SystemExit(f"{vae_dir}: seconds * fps must be sk + 1 frames for its temporal compression "
                             f"s = {vae.config.scale_factor_temporal}; got {len(clips[0].frames)}.")
        start = time.time()
        results[vae_dir] = evaluate(vae, clips)
        results[vae_dir]["seconds"] = round(time.time() - start, 1)
        results[vae_dir]["num_parameters"] = sum(p.numel() for p in vae.parameters())
    print(f"$ {command}")
    print(f"{args.num_clips} held-out clips, {len(clips[0].frames)} frames at {args.fps:g} fps, "
          f"{args.height}x{args.width}, 1 thread")
    for vae_dir, metrics in results.items():
        print(f"{vae_dir}: " + json.dumps(metrics))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as file:
            json.dump({"command": command, "results": results}, file, indent=2)
    return results


if __name__ == "__main__":
    main()
