#!/usr/bin/env python
"""Builds SyncDreamer-Tiny from scratch on CPU: synthetic clips -> tiny encoders -> latent cache -> training -> pipeline.

One command, every step with the project's own code, each step skipped when its output is already there (so a
killed run is continued by running the same command again):

    OMP_NUM_THREADS=1 python training_scripts/build_syncdreamer_tiny.py --work_dir outputs/syncdreamer_tiny/run \
        --output pipelines/syncdreamer-tiny --max_train_minutes 45

0. VAE: `training_scripts/train_tiny_vae.py` (`--train_vae_minutes`), unless `--vae` is given.
1. data: `write_clip_dataset` writes `--num_clips` train-split clips of the synthetic world (`work_dir/data`),
   with `--side_twins` each followed by its twin with left and right exchanged in the instructions.
2. initial pipeline (`work_dir/init_pipeline`):
   - tokenizer: a Unigram umT5-style tokenizer trained with `tokenizers` on the world's prompts and captions, so
     the instruction words ("raise", "right", "hand", "turn", "head", "nod", "wave", "look", ...) are whole tokens;
   - umT5 text encoder, CLIP vision image encoder, Wav2Vec2 audio encoder: tiny, random and FROZEN (nothing can
     be downloaded here). The Wav2Vec2 has conv biases, a LayerNorm per conv layer and no input normalisation:
     with the bias-free default the per-frame LayerNorm leaves a linear probe only r 0.71 of the loudness
     envelope, with this setting r 0.86 (`training_scripts/SYNCDREAMER_TINY.md`);
   - VAE: step 0 trains one with `training_scripts/train_tiny_vae.py` (`work_dir/vae`): by default a
     `SyncDreamerFrameAutoencoder` (4x spatial, frame by frame: every mouth shape keeps its own latent frame, and
     it trains in minutes where a tiny causal Wan VAE takes hours, `training_scripts/TINY_VAE.md`);
     `--vae` uses a finished one instead; `--train_vae_minutes 0` a random one (tests only: it decodes noise);
   - trained: the transformer (4 layers, 4 heads x 32), the visual adapter and the audio dynamics encoder.
3. latent cache: `syncdreamer preprocess` with the short prompts as the text (the benchmark prompts that way).
4. training: `training_scripts/train_syncdreamer.py`, stage 2, full fine-tuning, region-weighted loss
   (mouth for lip-sync, hands/eyes/jaw for the instructions), checkpoints, `--resume_from_checkpoint latest`.
   It runs in chunks of `--chunk_steps` (the learning-rate schedule, `--lr_scheduler`, spans all of them); after
   each chunk the saved pipeline is scored with
   `syncdreamer evaluate synthetic` (`--eval_clips`, 0 = off) and the learning curve is written to
   `work_dir/learning_curve.csv`.
5. `--output`: the trained pipeline (safetensors), its model card (what was trained, what stays random-frozen,
   the commands, wall times, metrics).
6. the final benchmark, `syncdreamer evaluate synthetic` on `--output` (`work_dir/eval/final.json`).
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_syncdreamer.py"
# `syncdreamer ...` run with this interpreter (the console script may not be on PATH, e.g. under a bare pytest)
SYNCDREAMER = [sys.executable, "-m", "syncdreamer_hf.cli"]
# umT5 tokens per prompt in the latent cache and at inference (the padding shares the text attention).
MAX_SEQUENCE_LENGTH = 32
# Words of the synthetic world's instructions that must stay whole tokens (tested).
INSTRUCTION_WORDS = ("turn", "head", "left", "right", "nod", "raise", "hand", "wave", "look", "up", "down",
                     "holding", "pen", "notebook", "talk")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="outputs/syncdreamer_tiny/run", help="data, cache, runs, evaluations")
    parser.add_argument("--output", default="pipelines/syncdreamer-tiny", help="the finished pipeline folder")
    parser.add_argument("--vae", default=None, help="a trained tiny VAE folder to use instead of step 0")
    parser.add_argument("--init_pipeline", default=None,
                        help="warm start: step 2 takes every component of this SyncDreamer-Tiny pipeline folder (its "
                             "frozen encoders and trained weights) instead of building new random ones; skips step 0")
    parser.add_argument("--train_vae_minutes", type=float, default=12.0,
                        help="step 0: train a tiny VAE with train_tiny_vae.py for this long (0: a random VAE, tests only)")
    parser.add_argument("--train_vae_steps", type=int, default=900, help="step 0: cosine schedule length")
    parser.add_argument("--vae_architecture", choices=("frame", "wan"), default="frame",
                        help="step 0: SyncDreamerFrameAutoencoder or AutoencoderKLWan (4x temporal)")
    parser.add_argument("--seed", type=int, default=0)
    # data
    parser.add_argument("--num_clips", type=int, default=480)
    parser.add_argument("--seconds", type=float, default=1.36,
                        help="clip length: short, so that every instructed motion starts in the first windows, from "
                             "the neutral reference frame, as at inference")
    parser.add_argument("--side_twins", action="store_true",
                        help="also write each clip's twin with left and right exchanged in its instructions "
                             "(write_clip_dataset(side_twins=True)): pairs that differ only in the side named")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=int, default=64, help="frame height and width")
    parser.add_argument("--num_frames", type=int, default=9, help="frames per training window and pipeline window")
    parser.add_argument("--num_motion_frames", type=int, default=2, help="pipeline: frames carried between windows")
    parser.add_argument("--window_stride", type=int, default=None, help="preprocess window stride (default: num_frames)")
    parser.add_argument("--pretrain_audio_steps", type=int, default=3000,
                        help="step 2b: pretrain the tiny Wav2Vec2 on the world's speech (pretrain_tiny_wav2vec2.py) "
                             "for this many steps before it is frozen (0: keep it random)")
    parser.add_argument("--pretrain_audio_clips", type=int, default=256, help="step 2b: train-split speech clips")
    # model
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--position_embedding", action="store_true",
                        help="a learned position embedding of the token grid in the transformer "
                             "(`position_embedding_grid`); with --init_pipeline it is added (at zero) when missing")
    parser.add_argument("--head_dim", type=int, default=32)
    # training
    parser.add_argument("--region_weights", default="mouth=20,hands=10,eyes=5,jaw=5")
    parser.add_argument("--mirror_region_weights", default="",
                        help="regions whose weight also covers their left-right mirror (train_syncdreamer.py's flag)")
    parser.add_argument("--twin_difference_weight", type=float, default=0.0,
                        help="weight of the side twins' difference loss (train_syncdreamer.py's flag; needs --side_twins)")
    parser.add_argument("--lambda_loc", type=float, default=0.4)
    parser.add_argument("--train_text_encoder", action="store_true",
                        help="train the tiny umT5 with the transformer (train_syncdreamer.py --train_text_encoder)")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--lr_warmup_steps", type=int, default=50)
    parser.add_argument("--lr_scheduler", default="constant_with_warmup",
                        help="diffusers.optimization scheduler over --max_train_steps (e.g. cosine: decays to 0)")
    parser.add_argument("--motion_condition_prob", type=float, default=0.7,
                        help="P(a training window knows motion latents instead of one frame): later windows are "
                             "the majority at inference")
    parser.add_argument("--motion_noise_max_sigma", type=float, default=0.25,
                        help="training noise on the known motion latents (exposure bias; 0: off)")
    parser.add_argument("--no_reference_sink", dest="reference_sink", action="store_false",
                        help="the v1 window condition: only the first window knows the reference")
    parser.add_argument("--motion_latent_noise", type=float, default=0.0,
                        help="the pipeline's inference noise on carried motion latents")
    parser.add_argument("--max_train_steps", type=int, default=4000)
    parser.add_argument("--max_train_minutes", type=float, default=None,
                        help="start no new chunk after this much training time (the run stops at a chunk's end)")
    parser.add_argument("--chunk_steps", type=int, default=250, help="train this many steps, then evaluate")
    parser.add_argument("--checkpointing_steps", type=int, default=50)
    # evaluation
    parser.add_argument("--eval_clips", type=int, default=4, help="held-out clips per intermediate evaluation (0: off)")
    parser.add_argument("--eval_seconds", type=float, default=4.0)
    parser.add_argument("--eval_steps", type=int, default=10, help="inference steps of the evaluations")
    # sampling defaults written into the pipeline config, used by every evaluation
    parser.add_argument("--num_inference_steps", type=int, default=10, help="the shipped pipeline's default")
    parser.add_argument("--guidance_scale", type=float, default=2.0,
                        help="text guidance; the large-model 5.0 shifts the tiny model's colours (SYNCDREAMER_TINY.md)")
    parser.add_argument("--audio_guidance_scale", type=float, default=2.5)
    parser.add_argument("--guidance_end", type=float, default=1.0,
                        help="fraction of each window's steps, from the noisiest, with text guidance")
    parser.add_argument("--mirrored_negative_prompt", action="store_true",
                        help="guide prompts that name a side away from their mirror (left <-> right)")
    parser.add_argument("--final_eval_clips", type=int, default=8, help="clips of the final benchmark (0: off)")
    # what to skip
    parser.add_argument("--skip_train", action="store_true", help="stop after the latent cache")
    parser.add_argument("--skip_final_eval", action="store_true")
    args = parser.parse_args(argv)
    if (args.num_frames - 1) % 4:
        parser.error(f"--num_frames must be 4k + 1 (any VAE's temporal compression); got {args.num_frames}.")
    return args


def log(message: str) -> None:
    print(f"[build_syncdreamer_tiny {time.strftime('%H:%M:%S')}] {message}", flush=True)


def shown(command: list[str]) -> str:
    """A command as a user types it: `syncdreamer ...` / `python training_scripts/...`."""
    if command[: len(SYNCDREAMER)] == SYNCDREAMER:
        command = ["syncdreamer", *command[len(SYNCDREAMER):]]
    elif command[0] == sys.executable:
        script = Path(command[1])
        command = ["python", str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script), *command[2:]]
    return " ".join(command)


def run(command: list[str], env_extra: dict | None = None) -> float:
    """Runs a subprocess (our own CLI/script), streaming its output; returns its wall seconds."""
    log("$ " + shown(command))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    start = time.time()
    subprocess.run(command, check=True, env=env)  # relative paths stay the caller's
    return time.time() - start


def load_state(work_dir: Path) -> dict:
    path = work_dir / "build_state.json"
    return json.loads(path.read_text()) if path.is_file() else {"wall_seconds": {}, "evaluations": [], "commands": {}}


def save_state(work_dir: Path, state: dict) -> None:
    temporary = work_dir / "build_state.json.tmp"
    temporary.write_text(json.dumps(state, indent=2))
    os.replace(temporary, work_dir / "build_state.json")


# ---------------------------------------------------------------------------------------------------------------
# 1. Data


def write_data(args, data_dir: Path) -> None:
    from syncdreamer_hf.data.synthetic import write_clip_dataset

    temporary = data_dir.with_name(data_dir.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    write_clip_dataset(temporary, args.num_clips, seconds=args.seconds, fps=args.fps, height=args.size,
                       width=args.size, split="train", seed=args.seed, side_twins=args.side_twins)
    os.replace(temporary, data_dir)


# ---------------------------------------------------------------------------------------------------------------
# 2. Initial pipeline


def text_corpus(data_dir: Path) -> list[str]:
    """Every prompt and caption of the training clips, every instruction phrase, and the world's colour words."""
    from syncdreamer_hf.data import synthetic as world

    lines = []
    for line in (data_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        lines += [record["prompt"], record["caption"]]
    lines += [world.short_prompt([name]) for name in world.INSTRUCTIONS]
    lines += [world.short_prompt([], [name]) for name in world.OBJECT_HANDS]
    lines += [" ".join(names) for names in (world.BACKGROUNDS, world.SHIRTS, world.HAIR_COLOURS, world.SKINS,
                                            world.EYE_COLOURS, world.HAIR_STYLES, world.FACE_SHAPES)]
    return lines


def build_tokenizer(corpus: list[str]):
    """A umT5-style Unigram tokenizer (NFKC, Metaspace, `<pad>` 0, `</s>` 1, `<unk>` 2) built from `corpus`.

    Its pieces are every word of the corpus ("▁raise") scored by its log frequency, plus every character, alone
    and after "▁", as a low-scored fallback, so the world's words are whole tokens and unseen words still spell
    out. (`tokenizers`' UnigramTrainer on a corpus this small keeps under 100 pieces and splits "right" into
    letters.)
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    words = Counter(
        piece for line in corpus for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    total = sum(words.values())
    characters = sorted({character for word in words for character in word.lstrip("\u2581")} | set(".,'-"))
    fallback = math.log(1 / total) - 10.0
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(word, math.log(count / total)) for word, count in sorted(words.items())]
    seen = {piece for piece, _ in vocab}
    vocab += [(piece, fallback) for character in characters for piece in (character, "\u2581" + character)
              if piece not in seen]
    if "\u2581" not in seen:
        vocab.append(("\u2581", fallback))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def random_tiny_vae(architecture: str):
    """A random 4x-spatial tiny VAE (development only: it decodes noise)."""
    from diffusers import AutoencoderKLWan

    from syncdreamer_hf import SyncDreamerFrameAutoencoder

    if architecture == "frame":
        return SyncDreamerFrameAutoencoder(z_dim=16, block_out_channels=(4, 4, 4))
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4,
                            latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def set_latent_statistics(vae, data_dir: Path, num_frames: int, max_clips: int = 8) -> None:
    """Per-channel mean/std of the posterior modes on a few training clips, which the pipeline normalises with."""
    import torch

    from syncdreamer_hf.media import load_video

    latents = []
    for path in sorted(data_dir.glob("clip_*.mp4"))[:max_clips]:
        frames, _ = load_video(path)
        pixels = torch.from_numpy(frames[:num_frames]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            latents.append(vae.encode(pixels).latent_dist.mode().transpose(0, 1).flatten(1))
    latents = torch.cat(latents, dim=1)
    vae.register_to_config(latents_mean=latents.mean(1).tolist(), latents_std=latents.std(1).clamp(min=1e-4).tolist())


def sampling_defaults(args) -> dict:
    """The pipeline-config defaults of a generation: size, steps and guidance."""
    return {"default_height": args.size, "default_width": args.size,
            "default_num_inference_steps": args.num_inference_steps, "default_guidance_scale": args.guidance_scale,
            "default_audio_guidance_scale": args.audio_guidance_scale, "default_guidance_end": args.guidance_end,
            "default_max_sequence_length": MAX_SEQUENCE_LENGTH, "reference_sink": args.reference_sink,
            "motion_latent_noise": args.motion_latent_noise,
            "default_mirrored_negative_prompt": args.mirrored_negative_prompt}


def position_embedding_grid(args, vae_config) -> list[int] | None:
    """The transformer's token grid at the build's frame size (patch 2x2), or None without --position_embedding."""
    side = args.size // vae_config["scale_factor_spatial"] // 2
    return [side, side] if args.position_embedding else None


def warm_start_pipeline(args, pipeline_dir: Path) -> None:
    """Step 2 with `--init_pipeline`: that pipeline's components, this build's window and sampling settings (and a
    zero position embedding added to its transformer when --position_embedding asks for one it lacks)."""
    from syncdreamer_hf import SyncDreamerPipeline, SyncDreamerTransformer3DModel

    pipe = SyncDreamerPipeline.from_pretrained(args.init_pipeline)
    grid = position_embedding_grid(args, pipe.vae.config)
    if grid and pipe.transformer.config.position_embedding_grid is None:
        config = {key: value for key, value in pipe.transformer.config.items() if key != "_use_default_values"}
        transformer = SyncDreamerTransformer3DModel.from_config({**config, "position_embedding_grid": grid})
        missing, unexpected = transformer.load_state_dict(pipe.transformer.state_dict(), strict=False)
        if missing != ["position_embedding.embedding"] or unexpected:
            raise RuntimeError(f"adding the position embedding: missing {missing}, unexpected {unexpected}")
        pipe.register_modules(transformer=transformer)
    pipe.register_to_config(num_frames_per_window=args.num_frames, num_motion_frames=args.num_motion_frames,
                            **sampling_defaults(args))
    save_pipeline(pipe, pipeline_dir)


def save_pipeline(pipe, pipeline_dir: Path) -> None:
    """`save_pretrained` to a temporary folder renamed to `pipeline_dir` (a killed run leaves no half folder)."""
    temporary = pipeline_dir.with_name(pipeline_dir.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    pipe.save_pretrained(temporary)
    if pipeline_dir.exists():
        shutil.rmtree(pipeline_dir)
    os.replace(temporary, pipeline_dir)


def install_audio_encoder(pipeline_dir: Path, audio_encoder_dir: Path) -> None:
    """Step 2b: the pretrained Wav2Vec2 replaces the pipeline's random one."""
    from transformers import Wav2Vec2Model

    from syncdreamer_hf import SyncDreamerPipeline

    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir)
    pipe.register_modules(audio_encoder=Wav2Vec2Model.from_pretrained(audio_encoder_dir).eval())
    save_pipeline(pipe, pipeline_dir)


def build_initial_pipeline(args, data_dir: Path, pipeline_dir: Path) -> None:
    import torch
    from diffusers import UniPCMultistepScheduler
    from transformers import (
        CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel, Wav2Vec2Config,
        Wav2Vec2FeatureExtractor, Wav2Vec2Model,
    )

    from syncdreamer_hf import AudioDynamicsEncoder, SyncDreamerPipeline, SyncDreamerTransformer3DModel
    from syncdreamer_hf import SyncDreamerVisualAdapter
    from syncdreamer_hf.tiny import load_vae

    torch.manual_seed(args.seed)
    text_dim, image_dim, identity_dim, audio_feature_dim, audio_dim, image_size = 32, 32, 32, 32, 32, 32
    tokenizer = build_tokenizer(text_corpus(data_dir))
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    ))
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=image_dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=8, projection_dim=image_dim,
    ))
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=False, return_attention_mask=False)
    # conv biases + per-layer LayerNorm, raw input: loudness survives the frozen random encoder best (module doc)
    audio_encoder = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=audio_feature_dim, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_bias=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=False, feat_extract_norm="layer",
    ))
    if args.vae:
        vae = load_vae(args.vae)
    else:
        vae = random_tiny_vae(args.vae_architecture)
        set_latent_statistics(vae, data_dir, args.num_frames)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    # trained from scratch (their new branches start at zero, as in a converted Wan model)
    transformer = SyncDreamerTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.num_heads, attention_head_dim=args.head_dim,
        in_channels=2 * vae.config.z_dim + 4, out_channels=vae.config.z_dim, text_dim=text_dim, freq_dim=64,
        ffn_dim=2 * args.num_heads * args.head_dim, num_layers=args.num_layers, rope_max_seq_len=64,
        identity_dim=identity_dim, audio_dim=audio_dim, position_embedding_grid=position_embedding_grid(args, vae.config),
    )
    visual_adapter = SyncDreamerVisualAdapter(image_embed_dim=image_dim, num_queries=8, hidden_dim=32, num_layers=1,
                                              num_attention_heads=2, identity_dim=identity_dim)
    audio_dynamics_encoder = AudioDynamicsEncoder(
        audio_feature_dim=audio_feature_dim, num_audio_layers=audio_encoder.config.num_hidden_layers + 1,
        hidden_dim=32, tokens_per_latent_frame=4, audio_dim=audio_dim, temporal_stride=vae.config.scale_factor_temporal,
    )
    pipe = SyncDreamerPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), scheduler=scheduler,
        image_processor=image_processor, image_encoder=image_encoder.eval(), visual_adapter=visual_adapter,
        feature_extractor=feature_extractor, audio_encoder=audio_encoder.eval(),
        audio_dynamics_encoder=audio_dynamics_encoder, transformer=transformer,
        num_frames_per_window=args.num_frames, num_motion_frames=args.num_motion_frames,
        **sampling_defaults(args),
    )
    save_pipeline(pipe, pipeline_dir)


# ---------------------------------------------------------------------------------------------------------------
# 4. Training in chunks, learning curve, intermediate evaluations


def latest_step(run_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


def train_command(args, init_dir: Path, cache_dir: Path, run_dir: Path, max_steps: int) -> list[str]:
    vae_config = json.loads((init_dir / "vae" / "config.json").read_text())
    return [
        sys.executable, str(TRAIN_SCRIPT), "--stage", "2", "--pretrained_model_name_or_path", str(init_dir),
        "--cache_dir", str(cache_dir), "--output_dir", str(run_dir), "--region_weights", args.region_weights,
        "--mirror_region_weights", args.mirror_region_weights, "--lambda_loc", str(args.lambda_loc),
        "--twin_difference_weight", str(args.twin_difference_weight),
        "--train_batch_size", str(args.train_batch_size),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler", args.lr_scheduler,
        "--lr_warmup_steps", str(args.lr_warmup_steps), "--lr_schedule_steps", str(args.max_train_steps),
        "--motion_condition_prob", str(args.motion_condition_prob),
        "--num_motion_latents", str(args.num_motion_frames // vae_config["scale_factor_temporal"]),
        "--motion_noise_max_sigma", str(args.motion_noise_max_sigma), *(["--reference_sink"] if args.reference_sink else []),
        *(["--train_text_encoder"] if args.train_text_encoder else []),
        "--max_train_steps", str(max_steps),
        "--checkpointing_steps", str(args.checkpointing_steps), "--checkpoints_total_limit", "2",
        "--resume_from_checkpoint", "latest", "--report_to", "tensorboard", "--seed", str(args.seed),
    ]


def write_learning_curve(run_dir: Path, path: Path) -> list[dict]:
    """Reads the tensorboard scalars of every (resumed) training chunk -> CSV: step, wall time, losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = {}
    for events in sorted((run_dir / "logs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                rows.setdefault(event.step, {"step": event.step, "wall_time": event.wall_time})[tag] = event.value
    rows = [rows[step] for step in sorted(rows)]
    columns = ["step", "wall_time", "loss", "loss_diffusion", "loss_localization", "loss_twin", "lr"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows


METRIC_KEYS = ("lip_sync_r", "lip_sync_lag_frames", "swapped_audio_r", "identity_colour_error",
               "identity_colour_drift", "identity_colour_slope_per_second", "identity_colour_error_per_window",
               "instruction_recall", "no_unasked_motion", "object_persistence", "seconds_per_generated_second")


def evaluate_command(model_dir: Path, output: Path, clips: int, seconds: float, steps: int, args,
                     prompt: str | None = None, swapped_audio: bool = True) -> list[str]:
    """`syncdreamer evaluate synthetic` on held-out clips with the build's size and guidance (`prompt`: one prompt
    for every clip instead of its own)."""
    command = [*SYNCDREAMER, "evaluate", "synthetic", "--model", str(model_dir), "--clips", str(clips),
               "--seconds", str(seconds), "--size", str(args.size), "--num-inference-steps", str(steps),
               "--guidance-scale", str(args.guidance_scale), "--audio-guidance-scale", str(args.audio_guidance_scale),
               "--guidance-end", str(args.guidance_end), "--output", str(output),
               "--mirrored-negative-prompt" if args.mirrored_negative_prompt else "--no-mirrored-negative-prompt"]
    return command + (["--prompt", prompt] if prompt is not None else []) + ([] if swapped_audio else ["--no-swapped-audio"])


def evaluate(command: list[str], output: Path, rerun: bool = True) -> dict:
    """Runs an `evaluate_command` (unless `rerun` is off and `output` exists) -> its command, wall time, metrics."""
    wall = 0.0
    if rerun or not output.is_file():
        wall = run(command, {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    results = json.loads(output.read_text())
    return {"command": shown(command), "wall_seconds": round(wall, 1), **{key: results.get(key) for key in METRIC_KEYS}}


def metric_cell(row: dict):
    """`cell(key, scale, fmt)`: one metric of `row` formatted for a table, "n/a" when missing."""

    def cell(key, scale=1.0, fmt="{:.3f}"):
        return "n/a" if row.get(key) is None else fmt.format(row[key] * scale)

    return cell


def format_metrics(row: dict) -> str:
    number = metric_cell(row)
    return (f"lip-sync r {number('lip_sync_r')}, swapped r {number('swapped_audio_r')}, colour error "
            f"{number('identity_colour_error', 255, '{:.1f}')}/255 (drift {number('identity_colour_drift', 255, '{:+.1f}')}), "
            f"instructions {number('instruction_recall', 100, '{:.0f}')}%, no unasked motion "
            f"{number('no_unasked_motion', 100, '{:.0f}')}%")


# ---------------------------------------------------------------------------------------------------------------
# 5. The shipped folder and its card


def keep_init_prompt_enhancer(args, folder: Path) -> None:
    """The build does not train the prompt enhancer: the warm start's `prompt_enhancer/` goes into `folder` as it is,
    with its own card (a re-save through `save_pretrained` would write a generic one)."""
    enhancer = Path(args.init_pipeline) / "prompt_enhancer" if args.init_pipeline else None
    if enhancer is not None and enhancer.is_dir():
        shutil.rmtree(folder / "prompt_enhancer", ignore_errors=True)
        shutil.copytree(enhancer, folder / "prompt_enhancer")


def name_as_output(pipe, output_dir: Path) -> None:
    """The shipped configs name the folder they ship in, not the work folder they were loaded from; the tokenizer
    does not keep the loading flag `local_files_only` as one of its settings."""
    from diffusers import ConfigMixin
    from transformers import PreTrainedTokenizerBase

    pipe.register_to_config(_name_or_path=str(output_dir))
    for name, component in pipe.components.items():
        if isinstance(component, ConfigMixin):
            component.register_to_config(_name_or_path=str(output_dir / name))
        elif isinstance(component, PreTrainedTokenizerBase):
            component.init_kwargs.pop("local_files_only", None)


def write_output(args, run_dir: Path, output_dir: Path, state: dict) -> None:
    from syncdreamer_hf.model_cards import count_parameters, write_model_card
    from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

    pipe = SyncDreamerPipeline.from_pretrained(run_dir)
    pipe.register_to_config(**sampling_defaults(args))
    name_as_output(pipe, output_dir)
    temporary = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    pipe.save_pretrained(temporary)
    keep_init_prompt_enhancer(args, temporary)
    trained = ["transformer", "visual_adapter", "audio_dynamics_encoder", *(["text_encoder"] if args.train_text_encoder else [])]
    frozen = [*([] if args.train_text_encoder else ["text_encoder (umT5)"]), "image_encoder (CLIP vision)"]
    probe = state.get("audio_encoder_probe")
    if probe:
        audio_note = (f"- pretrained here, then frozen: `audio_encoder` (Wav2Vec2), {args.pretrain_audio_steps} steps "
                      "regressing the loudness envelope of the world's train-split speech "
                      "(`training_scripts/pretrain_tiny_wav2vec2.py`, step 2b); ridge-probe r of held-out speech "
                      f"{probe['probe_r_before']['heldout_world_speech']:.3f} (random) -> "
                      f"{probe['probe_r_after']['heldout_world_speech']:.3f}.")
    else:
        frozen.append("audio_encoder (Wav2Vec2)")
    vae_note = (f"the VAE (`{type(pipe.vae).__name__}`, {count_parameters(pipe.vae)} parameters) was trained by "
                "`training_scripts/train_tiny_vae.py` (step 0, command below)" if args.vae or args.init_pipeline
                else "the VAE is RANDOM (development build: its videos are noise)")
    walls = state["wall_seconds"]
    lines = [
        ("Trained from scratch" if args.init_pipeline is None else f"Warm-started from `{args.init_pipeline}` and trained")
        + f" on CPU by `training_scripts/build_syncdreamer_tiny.py` on {args.num_clips} synthetic "
        f"train-split clips ({args.seconds:g} s, {args.size}x{args.size}, {args.fps:g} fps).",
        "",
        f"- trained here: {', '.join(f'`{name}`' for name in trained)} "
        f"({sum(p.numel() for name in trained for p in getattr(pipe, name).parameters()) / 1e6:.2f} M parameters); "
        f"{vae_note}.",
        f"- random and frozen (tiny configs, nothing could be downloaded): {', '.join(frozen)}. The tokenizer is a "
        "Unigram model built with `tokenizers` from the words of the synthetic world's prompts and captions.",
        *([audio_note] if probe else []),
        f"- training: {state.get('train_steps', 0)} steps of batch {args.train_batch_size}, "
        f"{walls.get('train', 0) / 60:.1f} min on 1 CPU thread; region weights `{args.region_weights}`"
        f"{f' (mirrored: {args.mirror_region_weights})' if args.mirror_region_weights else ''}, "
        f"{f'twin difference weight {args.twin_difference_weight}, ' if args.twin_difference_weight else ''}"
        f"lambda_loc {args.lambda_loc}, learning rate {args.learning_rate}.",
        "- wall times (s, one thread on a shared 2-core machine): "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in walls.items()),
        "",
        "Rebuild:",
        "",
        "```bash",
        state["commands"]["build"],
        "```",
        "",
        "Its step 0, the VAE:",
        "",
        "```bash",
        state["commands"].get("vae", "(not run: a given --vae)"),
        "```",
        "",
        "Training command (one chunk; the build resumes it chunk by chunk):",
        "",
        "```bash",
        state["commands"].get("train", "(not run)"),
        "```",
    ]
    if state["evaluations"]:
        lines += ["", "Synthetic benchmark (held-out identities, audio and instructions) vs training:", "",
                  "| step | train min | clips | lip-sync r | swapped r | colour err /255 | drift /255 | instructions | no unasked |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in state["evaluations"]:
            cell = metric_cell(row)
            lines.append(
                f"| {row['step']} | {row['train_minutes']:.1f} | {row['clips']} | {cell('lip_sync_r')} | "
                f"{cell('swapped_audio_r')} | {cell('identity_colour_error', 255, '{:.1f}')} | "
                f"{cell('identity_colour_drift', 255, '{:+.1f}')} | {cell('instruction_recall', 100, '{:.0f}%')} | "
                f"{cell('no_unasked_motion', 100, '{:.0f}%')} |"
            )
        lines += ["", f"Command of the last row: `{state['evaluations'][-1]['command']}`"]
        last = state["evaluations"][-1]
        met = {
            "lip-sync r >= 0.90": (last.get("lip_sync_r") or 0) >= 0.90,
            # a low swapped r only means something once the model follows its own audio
            "swapped r <= 0.15 (with lip-sync)": (last.get("lip_sync_r") or 0) >= 0.90
            and last.get("swapped_audio_r") is not None and last["swapped_audio_r"] <= 0.15,
            "colour error <= 4/255": (last.get("identity_colour_error") or 1) <= 4 / 255,
            "instructions >= 90%": (last.get("instruction_recall") or 0) >= 0.9 and (last.get("no_unasked_motion") or 0) >= 0.9,
        }
        lines += ["", "Targets (lip-sync, colour, instructions): " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in met.items())
                  + ". See `training_scripts/SYNCDREAMER_TINY.md` for the learning curves and what limits this model."]
    write_model_card(
        temporary, pipe, title="SyncDreamer-Tiny",
        summary=(f"A tiny SyncDreamer trained from scratch on the synthetic avatar world ({args.size}x{args.size} "
                 f"video, {args.num_frames}-frame windows), on CPU, by the project's own scripts. It shows the "
                 "pipeline end to end on a laptop; it knows only the synthetic world."),
        weights_note="\n".join(lines),
    )
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(temporary, output_dir)


def folder_megabytes(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir, init_dir, cache_dir = work_dir / "data", work_dir / "init_pipeline", work_dir / "cache"
    run_dir, eval_dir, output_dir = work_dir / "train", work_dir / "eval", Path(args.output)
    state = load_state(work_dir)
    state["commands"]["build"] = "OMP_NUM_THREADS=1 python training_scripts/build_syncdreamer_tiny.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    state["args"] = vars(args)

    # 0. VAE (resumable by itself; skipped once its folder is saved)
    if args.vae is None and args.init_pipeline is None and args.train_vae_minutes > 0:
        vae_run = work_dir / "vae"
        # many distinct images per step (16 clips x 2 frames) beat fewer, longer clips at equal wall time
        clip_frames = ["--num_frames", "2", "--train_batch_size", "16"] if args.vae_architecture == "frame" else []
        command = [sys.executable, str(REPO / "training_scripts" / "train_tiny_vae.py"), "--output_dir", str(vae_run),
                   "--architecture", args.vae_architecture, "--dim_mult", "1", "2", "4", "--base_dim", "16",
                   *clip_frames, "--learning_rate", "3e-3", "--posterior", "mode", "--height", str(args.size),
                   "--width", str(args.size), "--fps", str(args.fps), "--max_train_steps", str(args.train_vae_steps),
                   "--max_minutes", str(args.train_vae_minutes), "--checkpointing_steps", "100", "--resume"]
        state["commands"]["vae"] = shown(command)
        if not (vae_run / "train_summary.json").is_file():  # written after the VAE folder
            log("0. training the tiny VAE")
            run(command)
        else:
            log(f"0. {vae_run / 'vae'} exists: skipped")
        state["wall_seconds"]["vae"] = json.loads((vae_run / "train_summary.json").read_text())["train_seconds"]
        save_state(work_dir, state)
        args.vae = str(vae_run / "vae")

    # 1. data
    if not (data_dir / "metadata.jsonl").is_file():
        log(f"1. writing {args.num_clips} synthetic train clips{' and their side twins' * args.side_twins} to {data_dir}")
        start = time.time()
        write_data(args, data_dir)
        state["wall_seconds"]["data"] = time.time() - start
        save_state(work_dir, state)
    else:
        log(f"1. {data_dir} exists: skipped")

    # 2. initial pipeline
    if not (init_dir / "model_index.json").is_file():
        log(f"2. building the initial pipeline in {init_dir}")
        start = time.time()
        if args.init_pipeline:
            warm_start_pipeline(args, init_dir)
        else:
            build_initial_pipeline(args, data_dir, init_dir)
        state["wall_seconds"]["init_pipeline"] = time.time() - start
        save_state(work_dir, state)
    else:
        log(f"2. {init_dir} exists: skipped")

    # 2b. the Wav2Vec2 pretrained on the world's speech replaces the initial pipeline's
    if args.pretrain_audio_steps:
        audio_dir = work_dir / "audio_encoder"
        command = [sys.executable, str(REPO / "training_scripts" / "pretrain_tiny_wav2vec2.py"), "--pipeline",
                   str(init_dir), "--output", str(audio_dir), "--max_train_steps", str(args.pretrain_audio_steps),
                   "--train_clips", str(args.pretrain_audio_clips),
                   "--window_frames", str(args.num_frames), "--fps", str(args.fps), "--seed", str(args.seed)]
        state["commands"]["audio_encoder"] = shown(command)
        if not (audio_dir / "probe.json").is_file():  # written after the encoder
            log("2b. pretraining the Wav2Vec2 on the world's speech")
            state["wall_seconds"]["audio_encoder"] = run(command)
        weights = "model.safetensors"
        if (init_dir / "audio_encoder" / weights).read_bytes() != (audio_dir / weights).read_bytes():
            install_audio_encoder(init_dir, audio_dir)
        else:
            log(f"2b. {audio_dir} is in {init_dir}: skipped")
        state["audio_encoder_probe"] = json.loads((audio_dir / "probe.json").read_text())
        save_state(work_dir, state)

    # 3. latent cache (resumable by itself)
    command = [*SYNCDREAMER, "preprocess", str(data_dir), "--model", str(init_dir), "--output", str(cache_dir),
               "--height", str(args.size), "--width", str(args.size), "--num-frames", str(args.num_frames),
               "--fps", str(args.fps), "--caption-column", "prompt", "--max-sequence-length", str(MAX_SEQUENCE_LENGTH),
               "--device", "cpu"]
    if args.window_stride:
        command += ["--window-stride", str(args.window_stride)]
    from syncdreamer_hf.data.latent_cache import DONE_DIR

    num_clips = len((data_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines())
    if len(list((cache_dir / DONE_DIR).glob("*.json"))) < num_clips:
        log("3. latent cache")
        wall = run(command)
        state["wall_seconds"]["preprocess"] = state["wall_seconds"].get("preprocess", 0) + wall
        state["commands"]["preprocess"] = shown(command)
        save_state(work_dir, state)
    else:
        log(f"3. {cache_dir} holds every clip: skipped")
    if args.skip_train:
        log("--skip_train: stopping after the latent cache")
        return state

    # 4. training in chunks, each followed by an evaluation
    eval_dir.mkdir(exist_ok=True)
    while True:
        done = latest_step(run_dir)
        train_minutes = state["wall_seconds"].get("train", 0) / 60
        if done >= args.max_train_steps or (args.max_train_minutes is not None and train_minutes >= args.max_train_minutes
                                            and (run_dir / "model_index.json").is_file()):
            break
        target = min(args.max_train_steps, (done // args.chunk_steps + 1) * args.chunk_steps)
        log(f"4. training steps {done} -> {target} ({train_minutes:.1f} min so far)")
        command = train_command(args, init_dir, cache_dir, run_dir, target)
        state["commands"]["train"] = shown(command)
        wall = run(command)
        state["wall_seconds"]["train"] = state["wall_seconds"].get("train", 0) + wall
        state["train_steps"] = target
        rows = write_learning_curve(run_dir, work_dir / "learning_curve.csv")
        if rows:
            log(f"   loss at step {rows[-1]['step']}: {rows[-1].get('loss', float('nan')):.4f}")
        save_state(work_dir, state)
        if args.eval_clips:
            output = eval_dir / f"step-{target}.json"
            result = evaluate(evaluate_command(run_dir, output, args.eval_clips, args.eval_seconds, args.eval_steps,
                                               args), output)
            row = {"step": target, "train_minutes": state["wall_seconds"]["train"] / 60, "clips": args.eval_clips,
                   **result}
            state["evaluations"] = [r for r in state["evaluations"] if r["step"] != target] + [row]
            state["wall_seconds"]["evaluations"] = state["wall_seconds"].get("evaluations", 0) + result["wall_seconds"]
            log(f"   step {target}: {format_metrics(row)}")
            save_state(work_dir, state)

    # 5. the shipped folder (card first without the final benchmark, then again with it)
    write_output(args, run_dir, output_dir, state)
    # 6. final benchmark (again when the sampling settings or the output folder changed)
    step = latest_step(run_dir)
    command = evaluate_command(output_dir, eval_dir / "final.json", args.final_eval_clips, args.eval_seconds,
                               args.eval_steps, args)
    scored = any(row.get("final") and row["step"] == step and row.get("command") == shown(command)
                 for row in state["evaluations"])
    if args.final_eval_clips and not args.skip_final_eval and not scored:
        result = evaluate(command, eval_dir / "final.json")
        row = {"step": step, "train_minutes": state["wall_seconds"]["train"] / 60, "clips": args.final_eval_clips,
               "final": True, **result}
        state["evaluations"] = [r for r in state["evaluations"] if not r.get("final")] + [row]
        log(f"6. final benchmark: {format_metrics(row)}")
        save_state(work_dir, state)
        write_output(args, run_dir, output_dir, state)
    log(f"5. wrote {output_dir} ({folder_megabytes(output_dir):.1f} MB)")
    return state


if __name__ == "__main__":
    main()
