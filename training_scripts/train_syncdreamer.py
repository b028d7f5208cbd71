#!/usr/bin/env python
"""Fine-tune SyncDreamer on a latent cache (from `syncdreamer preprocess`), with accelerate, full or LoRA.

Stage 1 learns a motion/scene prior from text-video pairs: the audio branch is off (audio tokens are `None`,
its weights frozen). Stage 2 switches the audio on; audio, identity and text are each dropped with probability
0.1 so that the pipeline's classifier-free guidance has its unconditional passes.

The loss is flow matching as Wan (x_t = (1 - s) x_0 + s eps, target eps - x_0, shifted timesteps), optionally
region-weighted (`--region_weights mouth=20`), plus lambda_loc (0.4) times the attention localization loss of the
visual cross-attention in the transformer's `localization_layers` (mid-level blocks), for windows with masks.

    accelerate launch training_scripts/train_syncdreamer.py --pretrained_model_name_or_path PIPELINE \
        --cache_dir CACHE_DIR --output_dir runs/stage2 --stage 2 --lora_rank 32 --max_train_steps 2000

With `--lora_rank R` the transformer's attention/FFN get peft LoRA layers while the new branches (identity and
audio cross-attention and their projections), the visual adapter and the audio dynamics encoder train in full.
The output is then `pytorch_lora_weights.safetensors` (for `SyncDreamerPipeline.load_lora_weights`) plus the
fully trained modules (`visual_adapter/`, `audio_dynamics_encoder/`, `transformer_new_branches.safetensors`);
`SyncDreamerPipeline.load_trained_modules(output_dir)` loads all of it. Without LoRA the whole pipeline is saved with
`save_pretrained`. Distribution (DDP, FSDP, DeepSpeed) comes from `accelerate launch --config_file ...` only.
"""

import argparse
import functools
import hashlib
import logging
import math
import os
import shutil
import signal
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from syncdreamer_hf import AudioDynamicsEncoder, SyncDreamerTransformer3DModel, SyncDreamerVisualAdapter
from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows, pad_tokens
from syncdreamer_hf.losses import (
    LAMBDA_LOC,
    add_flow_noise,
    attention_localization_loss,
    flow_matching_target,
    region_weighted_flow_matching_loss,
    sample_flow_sigmas,
)
from syncdreamer_hf.models.transformer_syncdreamer import NEW_BRANCH_MODULES
from syncdreamer_hf.pipeline_syncdreamer import NEW_BRANCHES_FILE, SyncDreamerPipeline

logger = get_logger(__name__)

AUDIO_BRANCH = ("audio_embedder", "norm_audio", "attn_audio")
LORA_TARGETS = [
    *(f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")),
    "ffn.net.0.proj",
    "ffn.net.2",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # model and data
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="SyncDreamer pipeline folder or Hub id.")
    parser.add_argument("--cache_dir", required=True, help="latent cache written by `syncdreamer preprocess`.")
    parser.add_argument("--output_dir", default="syncdreamer-finetuned")
    parser.add_argument("--max_train_samples", type=int, default=None, help="use only the first N cached windows.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # what is trained
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2, help="1: audio off; 2: audio on.")
    parser.add_argument("--lora_rank", type=int, default=0, help="LoRA rank on the transformer; 0: full fine-tuning.")
    parser.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank).")
    # losses and conditioning
    parser.add_argument("--timestep_shift", type=float, default=3.0, help="Wan's shift of the sampled noise levels.")
    parser.add_argument("--lambda_loc", type=float, default=LAMBDA_LOC, help="weight of the localization loss.")
    parser.add_argument(
        "--region_weights", default="", help='per-region loss weights, e.g. "mouth=20,eyes=2" (needs cached masks).'
    )
    parser.add_argument("--audio_dropout", type=float, default=0.1, help="stage 2: P(audio tokens are None).")
    parser.add_argument("--identity_dropout", type=float, default=0.1, help="P(identity tokens are None).")
    parser.add_argument("--text_dropout", type=float, default=0.1, help="P(caption -> empty prompt), per sample.")
    parser.add_argument(
        "--motion_condition_prob", type=float, default=0.0,
        help="P(a batch knows its first --num_motion_latents latent frames instead of only the reference frame), "
        "as the pipeline's later windows do.",
    )
    parser.add_argument("--num_motion_latents", type=int, default=1)
    # optimisation
    parser.add_argument("--train_batch_size", type=int, default=1, help="per device.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--lr_scheduler", default="constant", help="diffusers.optimization scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="default: accelerate config.")
    parser.add_argument("--allow_tf32", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    # checkpoints, validation, logging, hub
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest".')
    parser.add_argument("--validation_steps", type=int, default=0, help="write a validation mp4 every N steps (0: off).")
    parser.add_argument("--validation_image", default=None)
    parser.add_argument("--validation_audio", default=None)
    parser.add_argument("--validation_prompt", default="a person talks to the camera")
    parser.add_argument("--validation_num_frames", type=int, default=None, help="default: the whole audio.")
    parser.add_argument("--validation_inference_steps", type=int, default=20)
    parser.add_argument("--report_to", default="tensorboard", help='accelerate tracker(s), or "none".')
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    # tests: kill -9 this process right after the checkpoint of this step is written
    parser.add_argument("--simulate_crash_at_step", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    args.region_weights = parse_region_weights(args.region_weights)
    if args.validation_steps and not (args.validation_image and args.validation_audio):
        parser.error("--validation_steps needs --validation_image and --validation_audio.")
    for name in ("audio_dropout", "identity_dropout", "text_dropout", "motion_condition_prob"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must lie in [0, 1].")
    return args


def parse_region_weights(text: str) -> dict[str, float]:
    """'mouth=20,eyes=2' -> {'mouth': 20.0, 'eyes': 2.0}."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--region_weights item {item!r} must look like mouth=20.") from None
    return weights


class SyncDreamerTrainingModule(nn.Module):
    """The trained modules as one `nn.Module`, so that accelerate wraps (DDP/FSDP) them once and one forward
    call runs visual adapter -> audio dynamics encoder -> transformer."""

    def __init__(self, transformer, visual_adapter, audio_dynamics_encoder):
        super().__init__()
        self.transformer = transformer
        self.visual_adapter = visual_adapter
        self.audio_dynamics_encoder = audio_dynamics_encoder

    def forward(
        self, model_input, timesteps, prompt_embeds, image_embeds, audio_hidden_states, return_identity_attention=False
    ):
        """`image_embeds` / `audio_hidden_states` set to None drop identity / audio (the branch gets None). The
        audio spans the video frames of `model_input`'s T latent frames: (T - 1) * temporal_stride + 1."""
        identity_embeds = self.visual_adapter(image_embeds) if image_embeds is not None else None
        audio_embeds = None
        if audio_hidden_states is not None:
            num_frames = (model_input.shape[2] - 1) * self.audio_dynamics_encoder.config.temporal_stride + 1
            audio_embeds = self.audio_dynamics_encoder(audio_hidden_states, num_frames).audio_embeds
        output = self.transformer(
            hidden_states=model_input,
            timestep=timesteps,
            encoder_hidden_states=prompt_embeds,
            identity_embeds=identity_embeds,
            audio_embeds=audio_embeds,
            return_identity_attention=return_identity_attention and identity_embeds is not None,
        )
        return output.sample, output.identity_attention


def load_models(args):
    transformer = SyncDreamerTransformer3DModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="transformer")
    visual_adapter = SyncDreamerVisualAdapter.from_pretrained(args.pretrained_model_name_or_path, subfolder="visual_adapter")
    audio_dynamics_encoder = AudioDynamicsEncoder.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="audio_dynamics_encoder"
    )
    return transformer, visual_adapter, audio_dynamics_encoder


def set_trainable(transformer, visual_adapter, audio_dynamics_encoder, args):
    """LoRA or full fine-tuning; in stage 1 the audio branch and the audio dynamics encoder stay frozen."""
    if args.lora_rank > 0:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_alpha or args.lora_rank,
                init_lora_weights=True,
                target_modules=LORA_TARGETS,
            )
        )
        for name, module in transformer.named_modules():
            if name.split(".")[-1] in NEW_BRANCH_MODULES:
                module.requires_grad_(True)
    else:
        transformer.requires_grad_(True)
    visual_adapter.requires_grad_(True)
    audio_dynamics_encoder.requires_grad_(args.stage == 2)
    if args.stage == 1:
        for name, module in transformer.named_modules():
            if name.split(".")[-1] in AUDIO_BRANCH:
                module.requires_grad_(False)


def step_generator(args, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """The random numbers of one micro-batch (noise, timesteps, dropout) depend only on where it is in the run
    (epoch, batch, rank), so that a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(hash((args.seed, epoch, batch_index, process_index)) % 2**63)


def training_loss(module, batch, args, generator, empty_prompt_embeds, region_names, query_regions, device, dtype):
    """One micro-batch: flow-matching loss (+ region weights) + lambda_loc * localization loss.

    Returns `(loss, logs)`. `batch` is a `collate_windows` batch; the dropout decisions and noise come from
    `generator`. Audio / identity dropout removes the modality for the whole micro-batch (the branch receives
    `None`, exactly as the pipeline's unconditional passes); text dropout swaps single captions for the empty
    prompt.
    """
    latents = batch["latents"].to(device)  # (B, 16, T, h, w)
    batch_size, _, num_latent_frames = latents.shape[:3]

    noise = torch.randn(latents.shape, generator=generator).to(device)
    sigmas = sample_flow_sigmas(batch_size, args.timestep_shift, generator=generator).to(device)
    noisy_latents = add_flow_noise(latents, noise, sigmas)
    target = flow_matching_target(latents, noise)

    num_known = 1
    if torch.rand((), generator=generator) < args.motion_condition_prob:
        num_known = min(args.num_motion_latents, num_latent_frames - 1)
    condition = SyncDreamerPipeline.prepare_condition(latents[:, :, :num_known], num_latent_frames)
    model_input = torch.cat([noisy_latents, condition], dim=1).to(dtype)  # (B, 36, T, h, w)

    prompt_embeds = batch["prompt_embeds"].to(device)
    drop_text = torch.rand(batch_size, generator=generator) < args.text_dropout
    if drop_text.any():
        empty = pad_tokens(empty_prompt_embeds, prompt_embeds.shape[1]).to(prompt_embeds)
        prompt_embeds = torch.where(drop_text.to(device).view(-1, 1, 1), empty, prompt_embeds)
    audio_dropout = 1.0 if args.stage == 1 else args.audio_dropout
    use_audio = bool(torch.rand((), generator=generator) >= audio_dropout)
    use_identity = bool(torch.rand((), generator=generator) >= args.identity_dropout)

    has_masks = batch["region_masks"] is not None and bool(batch["has_masks"].any())
    want_localization = args.lambda_loc > 0 and use_identity and has_masks
    model_pred, identity_attention = module(
        model_input,
        sigmas * 1000,
        prompt_embeds.to(dtype),
        batch["image_embeds"].to(device, dtype) if use_identity else None,
        batch["audio_hidden_states"].to(device, dtype) if use_audio else None,
        return_identity_attention=want_localization,
    )
    region_masks = batch["region_masks"].to(device) if has_masks else None
    diffusion_loss = region_weighted_flow_matching_loss(
        model_pred, target, region_masks, region_names, args.region_weights
    )
    loss = diffusion_loss
    logs = {"loss_diffusion": diffusion_loss.detach().item()}
    if want_localization:
        localization_loss = attention_localization_loss(
            identity_attention, region_masks, region_names, query_regions, batch["has_masks"].to(device)
        )
        loss = loss + args.lambda_loc * localization_loss
        logs["loss_localization"] = localization_loss.detach().item()
    logs["loss"] = loss.detach().item()
    return loss, logs


class EpochShuffleSampler(Sampler):
    """A random order per epoch from (seed, epoch) alone: a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def list_checkpoints(output_dir) -> list[Path]:
    """Finished checkpoints `checkpoint-<step>`, oldest first (temporary `.checkpoint-*` folders are ignored)."""
    found = [path for path in Path(output_dir).glob("checkpoint-*") if path.is_dir() and path.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda path: int(path.name.split("-")[1]))


def save_checkpoint(accelerator, args, global_step: int) -> Path:
    """`save_state` into `.checkpoint-<step>.tmp`, then rename: a crash never leaves a half-written checkpoint."""
    output_dir = Path(args.output_dir)
    final = output_dir / f"checkpoint-{global_step}"
    temporary = output_dir / f".checkpoint-{global_step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        if args.checkpoints_total_limit is not None:
            existing = list_checkpoints(output_dir)
            for old in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                shutil.rmtree(old)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    logger.info(f"saved {final}")
    return final


def trainable_checksum(module: nn.Module) -> str:
    """sha256 of every trainable parameter's bytes (identical on every rank when DDP keeps them in sync)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(module.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def new_branch_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The weights of the identity/audio branches (trained in full next to the LoRA layers)."""
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in transformer.state_dict().items()
        if any(part in NEW_BRANCH_MODULES for part in name.split(".")) and "lora_" not in name
    }


@torch.no_grad()
def log_validation(accelerator, args, module, cache_info, global_step: int):
    """Runs the pipeline with the current weights and writes `validation/step-<N>.mp4` with the audio muxed in."""
    from syncdreamer_hf.media import save_video

    trained = accelerator.unwrap_model(module)
    pipe = SyncDreamerPipeline.from_pretrained(
        args.pretrained_model_name_or_path,
        transformer=trained.transformer,
        visual_adapter=trained.visual_adapter,
        audio_dynamics_encoder=trained.audio_dynamics_encoder,
    ).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    was_training = trained.training
    trained.eval()
    with accelerator.autocast():
        output = pipe(
            image=args.validation_image,
            audio=args.validation_audio,
            prompt=args.validation_prompt,
            height=cache_info["height"],
            width=cache_info["width"],
            fps=cache_info["fps"],
            num_frames=args.validation_num_frames,
            num_inference_steps=args.validation_inference_steps,
            generator=torch.Generator().manual_seed(args.seed),
        )
    trained.train(was_training)
    path = Path(args.output_dir) / "validation" / f"step-{global_step}.mp4"
    save_video(output.frames[0], path, fps=cache_info["fps"], audio=output.audio)
    logger.info(f"validation video: {path}")
    return path


def save_final(accelerator, args, module):
    """Full fine-tuning: the whole pipeline with `save_pretrained`. LoRA: `pytorch_lora_weights.safetensors` for
    `load_lora_weights`, plus the fully trained modules."""
    state_dict = accelerator.get_state_dict(module)  # gathers FSDP shards; all ranks must call it
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    transformer, visual_adapter, audio_dynamics_encoder = load_models(args)
    trained = SyncDreamerTrainingModule(transformer, visual_adapter, audio_dynamics_encoder)
    if args.lora_rank > 0:
        set_trainable(transformer, visual_adapter, audio_dynamics_encoder, args)
    trained.load_state_dict(state_dict)
    trained.float()

    if args.lora_rank > 0:
        from peft.utils import get_peft_model_state_dict

        lora_config = transformer.peft_config["default"]
        SyncDreamerPipeline.save_lora_weights(
            output_dir,
            transformer_lora_layers=get_peft_model_state_dict(transformer),
            transformer_lora_adapter_metadata=lora_config.to_dict(),
        )
        visual_adapter.save_pretrained(output_dir / "visual_adapter")
        if args.stage == 2:
            audio_dynamics_encoder.save_pretrained(output_dir / "audio_dynamics_encoder")
        save_file(new_branch_state_dict(transformer), output_dir / NEW_BRANCHES_FILE)
    else:
        pipe = SyncDreamerPipeline.from_pretrained(
            args.pretrained_model_name_or_path,
            transformer=transformer,
            visual_adapter=visual_adapter,
            audio_dynamics_encoder=audio_dynamics_encoder,
        )
        pipe.save_pretrained(output_dir)
    logger.info(f"saved the trained {'LoRA' if args.lora_rank else 'pipeline'} to {output_dir}")

    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        repo_id = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
        upload_folder(
            repo_id=repo_id, folder_path=output_dir, token=args.hub_token,
            ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*", "validation/*"],
        )
        logger.info(f"pushed to https://huggingface.co/{repo_id}")


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        # a dropped modality leaves its branch without gradients in that step
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # 1. Models
    transformer, visual_adapter, audio_dynamics_encoder = load_models(args)
    set_trainable(transformer, visual_adapter, audio_dynamics_encoder, args)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    module = SyncDreamerTrainingModule(transformer, visual_adapter, audio_dynamics_encoder)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    query_regions = list(visual_adapter.config.query_regions)
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    logger.info(
        f"stage {args.stage}, {'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}: "
        f"{sum(p.numel() for p in trainable) / 1e6:.3f}M trainable of {sum(p.numel() for p in module.parameters()) / 1e6:.3f}M"
    )

    # 2. Data
    dataset = CachedWindowDataset(args.cache_dir, max_samples=args.max_train_samples)
    info = dataset.info
    region_names = dataset.region_names
    if args.region_weights and not set(args.region_weights) <= set(region_names):
        raise ValueError(f"--region_weights names {sorted(args.region_weights)}; the cache has masks {list(region_names)}.")
    sampler = EpochShuffleSampler(len(dataset), args.seed)
    train_dataloader = DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        collate_fn=functools.partial(
            collate_windows, max_sequence_length=info["max_sequence_length"], num_regions=len(region_names)
        ),
        num_workers=args.dataloader_num_workers,
        drop_last=False,
    )

    # 3. Optimiser and schedule
    optimizer = torch.optim.AdamW(
        trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    module, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(module, optimizer, train_dataloader, lr_scheduler)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    if accelerator.is_main_process:
        tracker_config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("syncdreamer", config=tracker_config)

    # 4. Resume
    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = (
            (list_checkpoints(output_dir) or [None])[-1]
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if checkpoint is None:
            logger.info(f"no checkpoint in {output_dir}: starting a new run")
        else:
            accelerator.load_state(str(checkpoint))
            global_step = int(checkpoint.name.split("-")[1])
            first_epoch = global_step // num_update_steps_per_epoch
            resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
            logger.info(f"resumed from {checkpoint} at step {global_step}")

    # 5. Train
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(dataset)} windows, {args.max_train_steps} steps of {total_batch_size} windows, {num_epochs} epochs")
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    empty_prompt_embeds = dataset.empty_prompt_embeds
    module.train()
    for epoch in range(first_epoch, num_epochs):
        loader, first_batch = train_dataloader, 0
        if epoch == first_epoch and resume_batches:
            loader, first_batch = accelerator.skip_first_batches(train_dataloader, resume_batches), resume_batches
        loader.set_epoch(epoch)  # the sampler's order of this epoch (accelerate's loaders reset it on iteration)
        for batch_index, batch in enumerate(loader, start=first_batch):
            generator = step_generator(args, epoch, batch_index, accelerator.process_index)
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss, logs = training_loss(
                        module, batch, args, generator, empty_prompt_embeds, region_names, query_regions,
                        accelerator.device, weight_dtype if args.lora_rank else torch.float32,
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                global_step += 1
                progress_bar.update(1)
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                progress_bar.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log(logs, step=global_step)
                if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                    save_checkpoint(accelerator, args, global_step)
                    if args.simulate_crash_at_step == global_step:
                        os.kill(os.getpid(), signal.SIGKILL)
                if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    log_validation(accelerator, args, module, info, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    # 6. Save
    accelerator.wait_for_everyone()
    logger.info(
        f"rank {accelerator.process_index} trainable checksum {trainable_checksum(accelerator.unwrap_model(module))}",
        main_process_only=False,
    )
    save_final(accelerator, args, module)
    accelerator.end_training()


if __name__ == "__main__":
    main()
