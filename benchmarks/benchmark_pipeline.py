"""Benchmarks the tiny SyncDreamer pipeline on CPU with one thread.

1. Time per generated second of video and peak RSS for 1, 2 and 4 windows (each case in a fresh process, so
   its peak RSS is its own): the cost per second should stay flat as the audio gets longer.
2. Transformer step time, ours (with identity and audio tokens) vs `WanTransformer3DModel` of the same size.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_pipeline.py
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FPS = 25


def run_windows(num_windows: int, steps: int) -> dict:
    """Generates a video of `num_windows` 9-frame windows; returns seconds per video second and peak RSS."""
    from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
    from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

    pipe = SyncDreamerPipeline(**build_tiny_components(), **TINY_PIPELINE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    num_frames = 9 + 8 * (num_windows - 1)
    audio = np.random.default_rng(0).standard_normal(round(num_frames / FPS * 16000)).astype(np.float32) * 0.1
    arguments = {"image": np.zeros((32, 32, 3), np.uint8), "audio": audio, "sample_rate": 16000,
                 "prompt": "a person talks", "num_inference_steps": steps, "max_sequence_length": 16}
    pipe(**{**arguments, "num_inference_steps": 1})  # warm-up
    start = time.perf_counter()
    frames = pipe(**arguments).frames
    seconds = time.perf_counter() - start
    assert frames.shape[1] == num_frames
    return {
        "windows": num_windows,
        "frames": num_frames,
        "video_seconds": num_frames / FPS,
        "wall_seconds": round(seconds, 3),
        "wall_per_video_second": round(seconds / (num_frames / FPS), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def step_time(model, inputs: dict, repeats: int) -> float:
    with torch.no_grad():
        model(**inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
    return (time.perf_counter() - start) / repeats * 1000


def compare_transformers(heads: int, head_dim: int, layers: int, frames: int, size: int, repeats: int) -> dict:
    """ms per forward of ours vs Wan at the same size (batch 1, `frames` latent frames of size x size)."""
    from diffusers import WanTransformer3DModel

    from syncdreamer_hf.models.transformer_syncdreamer import SyncDreamerTransformer3DModel

    config = {"patch_size": (1, 2, 2), "num_attention_heads": heads, "attention_head_dim": head_dim,
              "out_channels": 16, "text_dim": 64, "freq_dim": 64, "ffn_dim": 4 * heads * head_dim,
              "num_layers": layers, "rope_max_seq_len": 64}
    wan = WanTransformer3DModel(in_channels=36, **config).eval()
    ours = SyncDreamerTransformer3DModel.from_wan(wan, identity_dim=64, audio_dim=64).eval()
    common = {"hidden_states": torch.randn(1, 36, frames, size, size), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 64, 64)}
    wan_ms = step_time(wan, common, repeats)
    ours_ms = step_time(ours, {**common, "identity_embeds": torch.randn(1, 32, 64),
                               "audio_embeds": torch.randn(1, frames, 32, 64)}, repeats)
    ours_base_ms = step_time(ours, common, repeats)
    return {"size": f"{layers} layers, {heads}x{head_dim}, {frames}x{size}x{size} latents",
            "wan_ms": round(wan_ms, 2), "ours_ms": round(ours_ms, 2), "ratio": round(ours_ms / wan_ms, 3),
            "ours_without_identity_audio_ms": round(ours_base_ms, 2),
            "ratio_without_identity_audio": round(ours_base_ms / wan_ms, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", type=int, help="(internal) run one case and print its JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.windows:
        print(json.dumps(run_windows(args.windows, args.steps)))
        return

    print(f"CPU, torch threads = {torch.get_num_threads()}, {args.steps} steps per window, text+audio guidance")
    print("windows frames  video_s  wall_s  wall_s/video_s  peak_rss_mb")
    for num_windows in (1, 2, 4):
        result = subprocess.run([sys.executable, __file__, "--windows", str(num_windows), "--steps", str(args.steps)],
                                capture_output=True, text=True, check=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{row['windows']:7d} {row['frames']:6d} {row['video_seconds']:8.2f} {row['wall_seconds']:7.2f} "
              f"{row['wall_per_video_second']:15.3f} {row['peak_rss_mb']:12.1f}")
    print("\ntransformer forward (ms), ours with identity+audio tokens vs WanTransformer3DModel")
    # toy sizes, then one block at the width of Wan2.1-1.3B (12 heads x 128) on 5 x 32 x 32 latents
    for shape in ((2, 12, 2, 3, 4), (4, 32, 4, 5, 16), (12, 128, 1, 5, 32)):
        print(json.dumps(compare_transformers(*shape, repeats=args.repeats)))


if __name__ == "__main__":
    main()
