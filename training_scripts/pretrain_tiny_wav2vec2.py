#!/usr/bin/env python
"""Pretrains SyncDreamer-Tiny's tiny Wav2Vec2 to hear loudness, on the synthetic world's speech only.

A random frozen tiny Wav2Vec2 keeps the loudness the avatar's mouth follows only up to a linear-probe r of
0.86-0.89 (`probe_tiny_wav2vec2_loudness.py`), about where the tiny model's lip-sync stops. The real recipes
start from a pretrained Wav2Vec2 that hears far more than loudness; the tiny world has no such checkpoint, so this
script makes one: the encoder (its config unchanged) plus a linear head on its last hidden state regress the
50 Hz loudness envelope of the clip (`syncdreamer_hf.data.synthetic.loudness_envelope`, a function of the audio
alone, no video label), on windows cut as the pipeline cuts them. Random gain, spectral tilt and noise keep it
from learning the world's exact recording level or timbre. The head is dropped; the encoder is saved with
`save_pretrained` and goes into a pipeline as its `audio_encoder` (`build_syncdreamer_tiny.py --audio_encoder`).

    OMP_NUM_THREADS=1 python training_scripts/pretrain_tiny_wav2vec2.py \
        --pipeline pipelines/syncdreamer-tiny --output outputs/tiny_wav2vec2

Reports the ridge-probe r of held-out speech before and after (`probe.json` in `--output`).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model, set_seed

from syncdreamer_hf.data.synthetic import SAMPLE_RATE, loudness_envelope, synthesize_speech
from syncdreamer_hf.media import load_audio

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True,
                        help="SyncDreamer-Tiny folder whose audio_encoder (and feature_extractor) to start from")
    parser.add_argument("--output", help="the pretrained Wav2Vec2 folder (required unless --probe_only)")
    parser.add_argument("--probe_only", action="store_true",
                        help="train nothing: print the probe figures of --pipeline's own encoder")
    parser.add_argument("--train_clips", type=int, default=256, help="train-split speech clips")
    parser.add_argument("--clip_seconds", type=float, default=4.0)
    parser.add_argument("--window_frames", type=int, default=9, help="video frames per window (the pipeline's)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_train_steps", type=int, default=3000)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--probe_clips", type=int, default=6, help="held-out clips for the before/after probe")
    parser.add_argument("--probe_speech", nargs="*", default=[],
                        help="recordings (never trained on) to probe as well: the held-out speech of the report")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.output or args.probe_only):
        parser.error("--output is required (or --probe_only).")
    return args


def augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gain (x0.25-1.25), a first-order spectral tilt and a little white noise."""
    tilt = rng.uniform(-0.9, 0.9)
    tilted = audio.copy()
    tilted[1:] = audio[1:] - tilt * audio[:-1]
    tilted *= np.abs(audio).max() / max(np.abs(tilted).max(), 1e-8)
    noise = rng.uniform(0, 0.01) * rng.standard_normal(audio.size)
    return (rng.uniform(0.25, 1.25) * tilted + noise).astype(np.float32)


class LoudnessDataset:
    """Random windows of train-split speech with their envelope at the encoder's frame rate (one frame per `hop`
    samples; computed over the whole clip, as the mouth follows it)."""

    def __init__(self, num_clips: int, seconds: float, window_seconds: float, hop: int, seed: int):
        self.clips = [synthesize_speech(seconds, seed=index, split="train") for index in range(num_clips)]
        self.envelopes = [loudness_envelope(audio, SAMPLE_RATE / hop) for audio in self.clips]
        self.window, self.hop = round(window_seconds * SAMPLE_RATE), hop
        self.rng = np.random.default_rng(seed)

    def batch(self, feature_extractor, batch_size: int) -> tuple[torch.Tensor, list[np.ndarray]]:
        """`(input_values (B, window), [envelope from the window's first encoder frame on] * B)`."""
        inputs, targets = [], []
        for _ in range(batch_size):
            index = self.rng.integers(len(self.clips))
            first = self.rng.integers(0, len(self.envelopes[index]) - self.window // self.hop)  # in encoder frames
            start = first * self.hop
            inputs.append(augment(self.clips[index][start : start + self.window], self.rng))
            targets.append(self.envelopes[index][first:])
        values = feature_extractor(inputs, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        return values, targets


def loss_fn(encoder, head, values, targets) -> torch.Tensor:
    hidden = encoder(values).last_hidden_state  # (B, N, D)
    prediction = head(hidden).squeeze(-1)  # (B, N)
    target = torch.stack([torch.from_numpy(t[: prediction.shape[1]]) for t in targets])
    return torch.nn.functional.mse_loss(prediction, target)


def probe(feature_extractor, encoder, args) -> dict[str, float]:
    """Ridge-probe r of `probe_tiny_wav2vec2_loudness.py`, fitted on train-split clips the pretraining did not use,
    on the world's held-out speech and on `--probe_speech`."""
    from probe_tiny_wav2vec2_loudness import ridge_probe_r

    train = [synthesize_speech(args.clip_seconds, 10_000 + i, "train") for i in range(16)]
    tests = {"heldout_world_speech": [synthesize_speech(args.clip_seconds, i, "heldout") for i in range(args.probe_clips)]}
    if args.probe_speech:
        tests["probe_speech"] = [load_audio(path) for path in args.probe_speech]
    return {name: ridge_probe_r(feature_extractor, encoder.eval(), train, test, args.fps, args.window_frames, False)
            for name, test in tests.items()}


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)  # torch and numpy: Wav2Vec2's time masking in training draws from numpy's global RNG
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(args.pipeline, subfolder="feature_extractor")
    encoder = Wav2Vec2Model.from_pretrained(args.pipeline, subfolder="audio_encoder")
    probe_before = probe(feature_extractor, encoder, args)
    if args.probe_only:
        print(json.dumps(probe_before, indent=2))
        return
    encoder.train()
    head = torch.nn.Linear(encoder.config.hidden_size, 1)
    hop = math.prod(encoder.config.conv_stride)  # samples per encoder frame (320: 50 Hz)
    data = LoudnessDataset(args.train_clips, args.clip_seconds, args.window_frames / args.fps, hop, args.seed)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.max_train_steps)

    start, curve = time.time(), []
    progress = tqdm(range(args.max_train_steps), desc="pretrain Wav2Vec2")
    for _ in progress:
        loss = loss_fn(encoder, head, *data.batch(feature_extractor, args.batch_size))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        curve.append(loss.item())
        progress.set_postfix(loss=f"{np.mean(curve[-50:]):.4f}")

    train_seconds = time.time() - start
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    encoder.eval().save_pretrained(output)
    report = {
        "probe_r_before": probe_before,
        "probe_r_after": probe(feature_extractor, Wav2Vec2Model.from_pretrained(output), args),
        "loss_first_50": float(np.mean(curve[:50])), "loss_last_50": float(np.mean(curve[-50:])),
        "train_seconds": train_seconds, "args": vars(args),
    }
    (output / "probe.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({key: value for key, value in report.items() if key != "args"}, indent=2))


if __name__ == "__main__":
    main()
