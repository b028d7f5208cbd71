"""Does a RANDOM frozen tiny Wav2Vec2 still carry the loudness the synthetic avatar's mouth follows?

The audio is cut as the pipeline cuts it (windows of 17 frames at 25 fps, each normalised by the feature
extractor on its own), every hidden state is interpolated to the video frames (as the audio dynamics encoder does),
and a ridge-regression probe from the per-frame features (all layers; optionally with the neighbouring frames) to
`loudness_envelope` is fitted on train-split speech and scored (Pearson r) on held-out speech. A config whose
probe is weak cannot give lip-sync, whatever the trained modules learn.

    OMP_NUM_THREADS=1 python training_scripts/probe_tiny_wav2vec2_loudness.py
"""

import argparse
import itertools

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from syncdreamer_hf.data.synthetic import SAMPLE_RATE, loudness_envelope, synthesize_speech


def build_encoder(do_normalize: bool, conv_bias: bool, feat_extract_norm: str, conv_dim: int, seed: int = 0):
    """The tiny Wav2Vec2 of `build_syncdreamer_tiny.py` / `tiny.py` with the probed settings."""
    torch.manual_seed(seed)
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                                 do_normalize=do_normalize, return_attention_mask=False)
    encoder = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(conv_dim,) * 7,
        conv_bias=conv_bias, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=False,
        feat_extract_norm=feat_extract_norm,
    ))
    return feature_extractor, encoder.eval()


@torch.no_grad()
def frame_features(feature_extractor, encoder, audio: np.ndarray, fps: float, window: int) -> np.ndarray:
    """(F, L * D): every hidden state of each window, linearly interpolated to the window's video frames."""
    num_windows = int(len(audio) / SAMPLE_RATE * fps) // window
    features = []
    for index in range(num_windows):
        start, length = round(index * window / fps * SAMPLE_RATE), round(window / fps * SAMPLE_RATE)
        inputs = feature_extractor(audio[start : start + length], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        hidden = torch.stack(encoder(inputs.input_values, output_hidden_states=True).hidden_states, 1)[0]  # (L, N, D)
        per_frame = torch.nn.functional.interpolate(hidden.transpose(1, 2), size=window, mode="linear")  # (L, D, F)
        features.append(per_frame.permute(2, 0, 1).flatten(1).numpy())
    return np.concatenate(features)


def ridge_probe_r(feature_extractor, encoder, train_audio, test_audio, fps: float, window: int, context: bool) -> float:
    """Mean per-clip Pearson r, on `test_audio`, of a ridge probe fitted on `train_audio`."""

    def dataset(clips):
        inputs, targets = [], []
        for audio in clips:
            features = frame_features(feature_extractor, encoder, audio, fps, window)
            if context:
                features = np.concatenate([np.roll(features, 1, 0), features, np.roll(features, -1, 0)], 1)
            inputs.append(features)
            targets.append(loudness_envelope(audio, fps)[: len(features)])
        return inputs, targets

    train_x, train_y = dataset(train_audio)
    x, y = np.concatenate(train_x), np.concatenate(train_y)
    mean, std = x.mean(0), x.std(0) + 1e-6
    design = np.c_[(x - mean) / std, np.ones(len(x))]
    weights = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ y)
    test_x, test_y = dataset(test_audio)
    scores = [np.corrcoef(np.c_[(f - mean) / std, np.ones(len(f))] @ weights, t)[0, 1] for f, t in zip(test_x, test_y)]
    return float(np.mean(scores))


def probe_r(config: dict, train_audio, test_audio, fps: float, window: int, context: bool) -> float:
    """`ridge_probe_r` of a random encoder built with `config`."""
    feature_extractor, encoder = build_encoder(**config)
    return ridge_probe_r(feature_extractor, encoder, train_audio, test_audio, fps, window, context)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_clips", type=int, default=16)
    parser.add_argument("--test_clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--window", type=int, default=17, help="video frames per pipeline window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_audio = [synthesize_speech(args.seconds, seed, "train") for seed in range(args.train_clips)]
    test_audio = [synthesize_speech(args.seconds, seed, "heldout") for seed in range(args.test_clips)]
    print("| do_normalize | conv_bias | feat_extract_norm | conv_dim | probe r (frame) | probe r (frame +/- 1) |")
    print("|---|---|---|---|---|---|")
    for do_normalize, conv_bias, norm, conv_dim in itertools.chain(
        itertools.product([True, False], [False, True], ["group"], [16]),
        [(True, True, "group", 32), (True, False, "group", 32), (True, False, "layer", 16), (False, True, "layer", 16)],
    ):
        config = {"do_normalize": do_normalize, "conv_bias": conv_bias, "feat_extract_norm": norm, "conv_dim": conv_dim}
        scores = [probe_r(config, train_audio, test_audio, args.fps, args.window, context) for context in (False, True)]
        print(f"| {do_normalize} | {conv_bias} | {norm} | {conv_dim} | {scores[0]:.3f} | {scores[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
