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
Every `checkpoint-N/` and the final `--output_dir` hold what was trained in the format the pipeline loads: a LoRA
run writes `pytorch_lora_weights.safetensors` (for `SyncDreamerPipeline.load_lora_weights`) plus the fully trained
modules (`visual_adapter/`, `audio_dynamics_encoder/`, `transformer_new_branches.safetensors`), all of it loaded by
`SyncDreamerPipeline.load_trained_modules(folder)`; a full run writes a pipeline folder
(`SyncDreamerPipeline.from_pretrained(folder)`). Checkpoints also hold accelerate's optimizer/scheduler/RNG state
for `--resume_from_checkpoint`.

Precision as diffusers' examples: under `--mixed_precision bf16` a LoRA run keeps the frozen base in bf16 and every
trainable parameter in float32. Distribution (DDP, FSDP, DeepSpeed) comes from `accelerate launch --config_file ...`
only (`training_scripts/accelerate_configs/`).
"""

import argparse
import functools
import logging
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from syncdreamer_hf.data.latent_cache import CachedWindowDataset, collate_windows, pad_tokens, twin_original
from syncdreamer_hf.data.synthetic import TWIN_SUFFIX
from syncdreamer_hf.losses import (
    LAMBDA_LOC,
    add_flow_noise,
    attention_localization_loss,
    flow_matching_target,
    region_weighted_flow_matching_loss,
    sample_flow_sigmas,
)
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.training import (
    EVERY_RANK,
    EpochShuffleSampler,
    PairedShuffleSampler,
    SyncDreamerTrainingModule,
    checkpoint_step,
    list_checkpoints,
    register_checkpoint_hooks,
    remove_stale_temporaries,
    save_checkpoint,
    save_trained,
    step_generator,
    trainable_checksum,
)
from syncdreamer_hf.training.module import gathered_for_inference
from syncdreamer_hf.training.options import optimizer_class, parse_region_weights

logger = get_logger(__name__)


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
    parser.add_argument(
        "--train_text_encoder", action="store_true",
        help="train the text encoder too (in full), from each window's caption instead of the cached embeddings: for a "
        "random text encoder such as the tiny recipe's; the real recipes keep their pretrained umT5 frozen.",
    )
    # losses and conditioning
    parser.add_argument("--timestep_shift", type=float, default=3.0, help="Wan's shift of the sampled noise levels.")
    parser.add_argument("--lambda_loc", type=float, default=LAMBDA_LOC, help="weight of the localization loss.")
    parser.add_argument(
        "--region_weights", default="", help='per-region loss weights, e.g. "mouth=20,eyes=2" (needs cached masks).'
    )
    parser.add_argument(
        "--mirror_region_weights", default="",
        help='comma-separated regions (e.g. "hands") whose weight also covers the left-right mirror of their mask: '
        "a hand drawn on the wrong side then costs as much as the right one, instead of weight 1.",
    )
    parser.add_argument(
        "--twin_difference_weight", type=float, default=0.0,
        help="> 0: batches hold each window next to its twin's (a clip named <clip>--twin_suffix, e.g. the synthetic "
        "world's side twins), both noised alike, and this weight times the region-weighted MSE of the pair's "
        "difference (prediction a - b against target a - b) joins the loss: what tells the two apart, their text, "
        "weighs more. Needs an even --train_batch_size.",
    )
    parser.add_argument("--twin_suffix", default=TWIN_SUFFIX, help="how a twin clip's name ends.")
    parser.add_argument("--audio_dropout", type=float, default=0.1, help="stage 2: P(audio tokens are None).")
    parser.add_argument("--identity_dropout", type=float, default=0.1, help="P(identity tokens are None).")
    parser.add_argument("--text_dropout", type=float, default=0.1, help="P(caption -> empty prompt), per sample.")
    parser.add_argument(
        "--motion_condition_prob", type=float, default=0.0,
        help="P(a batch knows its first --num_motion_latents latent frames instead of only the reference frame), "
        "as the pipeline's later windows do.",
    )
    parser.add_argument("--num_motion_latents", type=int, default=1)
    parser.add_argument(
        "--motion_noise_max_sigma", type=float, default=0.0,
        help="noise the known motion latents to a flow-matching sigma drawn from U(0, this) per window, so the model "
        "learns not to copy the errors of the motion latents it generates itself at inference (exposure bias).",
    )
    parser.add_argument(
        "--reference_sink", action="store_true",
        help="every window gets the clip's reference latent as an extra known frame in front (the pipeline's "
        "`reference_sink`; needs a cache with `reference_latents`).",
    )
    # optimisation
    parser.add_argument("--train_batch_size", type=int, default=1, help="per device.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit (pip install bitsandbytes).")
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--lr_scheduler", default="constant", help="diffusers.optimization scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument(
        "--lr_schedule_steps", type=int, default=None,
        help="length of the learning-rate schedule (default: --max_train_steps); a run trained in chunks (each "
        "resuming the last with a higher --max_train_steps) passes the whole run's length, so a decay ends once.",
    )
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
        help="default: the accelerate config. A LoRA run's frozen base is cast to it; trainable weights stay float32.",
    )
    parser.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs (faster, ~fp32 accuracy).")
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
    args = parser.parse_args(argv)

    args.region_weights = parse_region_weights(args.region_weights)
    args.mirror_region_weights = [name for name in args.mirror_region_weights.split(",") if name]
    if not set(args.mirror_region_weights) <= set(args.region_weights):
        parser.error("--mirror_region_weights names regions that --region_weights does not weigh.")
    if args.validation_steps and not (args.validation_image and args.validation_audio):
        parser.error("--validation_steps needs --validation_image and --validation_audio.")
    if args.twin_difference_weight < 0 or (args.twin_difference_weight and args.train_batch_size % 2):
        parser.error("--twin_difference_weight must be >= 0 and needs an even --train_batch_size.")
    if not args.twin_suffix:
        parser.error("--twin_suffix must not be empty.")
    for name in ("audio_dropout", "identity_dropout", "text_dropout", "motion_condition_prob", "motion_noise_max_sigma"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must lie in [0, 1].")
    return args


def twin_positions(windows: list[str], twin_suffix: str) -> tuple[list[int], list[int]]:
    """Positions `(a, b)` of a batch's twin pairs: window b is the twin of window a and follows it at an even
    position (`PairedShuffleSampler`'s order)."""
    first = [
        k for k in range(0, len(windows) - 1, 2)
        if windows[k + 1] != windows[k] and twin_original(windows[k + 1], twin_suffix) == windows[k]
    ]
    return first, [k + 1 for k in first]


def training_loss(
    module, batch, args, generator, empty_prompt_embeds, region_names, query_regions, device, dtype,
    modality_generator=None, tokenizer=None,
):
    """One micro-batch: flow-matching loss (+ region weights) + lambda_loc * localization loss.

    Returns `(loss, logs)`. `batch` is a `collate_windows` batch; the noise and the text dropout come from
    `generator`, the audio / identity dropout decisions from `modality_generator` (default: `generator`; in training
    one generator every rank shares, since FSDP needs all ranks to compute gradients of the same parameters).
    Audio / identity dropout removes the modality for the whole micro-batch (the branch receives `None`, exactly as
    the pipeline's unconditional passes); text dropout swaps single captions for the empty prompt (with
    `--train_text_encoder`, `tokenizer` tokenizes the captions for the module's text encoder). With `--reference_sink` the clip's reference latent is prepended to the window as a known frame (as the
    pipeline's `reference_sink` does); the loss leaves that frame out. With `--twin_difference_weight` the twin
    pairs of the batch (`twin_positions`) share their noise, noise level and dropout decisions, and the weighted
    MSE of their difference joins the loss.
    """
    latents = batch["latents"].to(device)  # (B, 16, T, h, w)
    batch_size, _, num_latent_frames = latents.shape[:3]
    num_sink_frames = int(args.reference_sink)
    if num_sink_frames:
        if batch["reference_latents"] is None:
            raise ValueError(
                "--reference_sink needs `reference_latents` in the latent cache; rebuild it with `syncdreamer preprocess`."
            )
        latents = torch.cat([batch["reference_latents"].to(device), latents], dim=2)  # (B, 16, 1 + T, h, w)

    noise = torch.randn(latents.shape, generator=generator).to(device)
    sigmas = sample_flow_sigmas(batch_size, args.timestep_shift, generator=generator).to(device)
    first, second = twin_positions(batch["windows"], args.twin_suffix) if args.twin_difference_weight else ([], [])
    noise[second], sigmas[second] = noise[first], sigmas[first]  # a pair differs in its clean latents only
    noisy_latents = add_flow_noise(latents, noise, sigmas)
    target = flow_matching_target(latents, noise)

    num_known = 1
    if torch.rand((), generator=generator) < args.motion_condition_prob:
        num_known = min(args.num_motion_latents, num_latent_frames - 1)
    known_latents = latents[:, :, num_sink_frames : num_sink_frames + num_known]
    if num_known > 1 and args.motion_noise_max_sigma > 0:  # motion latents, as the pipeline carries them
        motion_sigmas = torch.rand(batch_size, generator=generator).to(device) * args.motion_noise_max_sigma
        motion_noise = torch.randn(known_latents.shape, generator=generator).to(device)
        motion_sigmas[second], motion_noise[second] = motion_sigmas[first], motion_noise[first]
        known_latents = add_flow_noise(known_latents, motion_noise, motion_sigmas)
    if num_sink_frames:
        known_latents = SyncDreamerPipeline.add_reference_sink(latents[:, :, :num_sink_frames], known_latents)
    condition = SyncDreamerPipeline.prepare_condition(known_latents, num_sink_frames + num_latent_frames)
    model_input = torch.cat([noisy_latents, condition], dim=1).to(dtype)  # (B, 36, [1 +] T, h, w)

    prompt_embeds = batch["prompt_embeds"].to(device)
    drop_text = torch.rand(batch_size, generator=generator) < args.text_dropout
    drop_text[second] = drop_text[first]
    prompt_tokens = None
    if args.train_text_encoder:
        captions = ["" if drop else caption for caption, drop in zip(batch["captions"], drop_text.tolist())]
        tokens = SyncDreamerPipeline.tokenize_prompts(tokenizer, captions, prompt_embeds.shape[1])
        prompt_tokens = [tensor.to(device) for tensor in tokens]
    elif drop_text.any():
        empty = pad_tokens(empty_prompt_embeds, prompt_embeds.shape[1]).to(prompt_embeds)
        prompt_embeds = torch.where(drop_text.to(device).view(-1, 1, 1), empty, prompt_embeds)
    audio_dropout = 1.0 if args.stage == 1 else args.audio_dropout
    modality_generator = modality_generator or generator
    use_audio = bool(torch.rand((), generator=modality_generator) >= audio_dropout)
    use_identity = bool(torch.rand((), generator=modality_generator) >= args.identity_dropout)

    has_masks = batch["region_masks"] is not None and bool(batch["has_masks"].any())
    want_localization = args.lambda_loc > 0 and use_identity and has_masks
    model_pred, identity_attention = module(
        model_input,
        sigmas * 1000,
        prompt_embeds.to(dtype),
        batch["image_embeds"].to(device, dtype) if use_identity else None,
        batch["audio_hidden_states"].to(device, dtype) if use_audio else None,
        return_identity_attention=want_localization,
        num_sink_frames=num_sink_frames,
        prompt_tokens=prompt_tokens,
    )
    if num_sink_frames:  # the sink frame is conditioning, not an output
        model_pred, target = model_pred[:, :, num_sink_frames:], target[:, :, num_sink_frames:]
        if identity_attention:
            sink_tokens = identity_attention[0].shape[1] // (num_sink_frames + num_latent_frames) * num_sink_frames
            identity_attention = [probs[:, sink_tokens:] for probs in identity_attention]
    region_masks = batch["region_masks"].to(device) if has_masks else None
    diffusion_loss = region_weighted_flow_matching_loss(
        model_pred, target, region_masks, region_names, args.region_weights, args.mirror_region_weights
    )
    loss = diffusion_loss
    logs = {"loss_diffusion": diffusion_loss.detach().item()}
    if first:  # what tells a pair apart: the difference of the predictions against the difference of the targets
        pair_masks = torch.maximum(region_masks[first], region_masks[second]) if region_masks is not None else None
        twin_loss = region_weighted_flow_matching_loss(
            model_pred[first] - model_pred[second], target[first] - target[second], pair_masks, region_names,
            args.region_weights, args.mirror_region_weights,
        )
        loss = loss + args.twin_difference_weight * twin_loss
        logs["loss_twin"] = twin_loss.detach().item()
    if want_localization:
        localization_loss = attention_localization_loss(
            identity_attention, region_masks, region_names, query_regions, batch["has_masks"].to(device)
        )
        loss = loss + args.lambda_loc * localization_loss
        logs["loss_localization"] = localization_loss.detach().item()
    logs["loss"] = loss.detach().item()
    return loss, logs


@torch.no_grad()
def log_validation(accelerator, args, module, cache_info, global_step: int):
    """Runs the pipeline with the current weights and writes `validation/step-<N>.mp4` with the audio muxed in.
    Every rank runs it (a sharded model's forward is collective); the main process writes the video."""
    from syncdreamer_hf.media import save_video

    trained = accelerator.unwrap_model(module)
    pipe = SyncDreamerPipeline.from_pretrained(
        args.pretrained_model_name_or_path, **{name: getattr(trained, name) for name in trained.component_names}
    )
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in trained.component_names:
            component.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    was_training = trained.training
    trained.eval()
    with gathered_for_inference(accelerator, module), accelerator.autocast():
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
    if accelerator.is_main_process:
        save_video(output.frames[0], path, fps=cache_info["fps"], audio=output.audio)
        logger.info(f"validation video: {path}")
    return path


def save_final(args, trained, state_dict):
    """What was trained, from memory into `--output_dir` (the format of the module docstring); then `--push_to_hub`.
    Main process only; `state_dict` is `accelerator.get_state_dict(module)` (gathered from FSDP shards)."""
    output_dir = Path(args.output_dir)
    save_trained(trained, output_dir, args.pretrained_model_name_or_path, state_dict)
    logger.info(f"saved the trained {'LoRA' if args.lora_rank else 'pipeline'} to {output_dir}")

    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        repo_id = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
        upload_folder(
            repo_id=repo_id, folder_path=output_dir, token=args.hub_token,
            ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*", "validation/*"],
        )
        logger.info(f"pushed to https://huggingface.co/{repo_id}")


def load_training_module(args, weight_dtype: torch.dtype) -> SyncDreamerTrainingModule:
    """The trained models with what trains set (LoRA or full, the stage). As diffusers' examples: the frozen weights
    in `weight_dtype` (a LoRA run's base transformer), every trainable parameter in float32."""
    module = SyncDreamerTrainingModule.from_pretrained(
        args.pretrained_model_name_or_path, transformer_dtype=weight_dtype if args.lora_rank else torch.float32,
        train_text_encoder=args.train_text_encoder,
    )
    module.set_trainable(args.stage, args.lora_rank, args.lora_alpha)
    cast_training_params(module, dtype=torch.float32)
    if args.gradient_checkpointing:
        module.transformer.enable_gradient_checkpointing()
    return module


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    optimizer_cls = optimizer_class(args.use_8bit_adam)
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
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(output_dir):
            logger.info(f"removed {stale}, left by an interrupted checkpoint write")

    # 1. Models
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    module = load_training_module(args, weight_dtype)
    query_regions = list(module.visual_adapter.config.query_regions)
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    logger.info(
        f"stage {args.stage}, {'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}: "
        f"{sum(p.numel() for p in trainable) / 1e6:.3f}M trainable of {sum(p.numel() for p in module.parameters()) / 1e6:.3f}M"
    )
    # checkpoints hold what was trained, in the pipeline's formats
    register_checkpoint_hooks(accelerator, args.pretrained_model_name_or_path)

    # 2. Data
    dataset = CachedWindowDataset(args.cache_dir, max_samples=args.max_train_samples)
    info = dataset.info
    region_names = dataset.region_names
    if args.region_weights and not set(args.region_weights) <= set(region_names):
        raise ValueError(f"--region_weights names {sorted(args.region_weights)}; the cache has masks {list(region_names)}.")
    if args.twin_difference_weight:
        twin_pairs = dataset.twin_pairs(args.twin_suffix)
        if not twin_pairs:
            raise ValueError(f"--twin_difference_weight: no window of the cache belongs to a clip named *{args.twin_suffix}.")
        logger.info(f"{len(twin_pairs)} twin pairs of windows")
        sampler = PairedShuffleSampler(len(dataset), twin_pairs, args.seed)
    else:
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
    optimizer = optimizer_cls(
        trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=(args.lr_schedule_steps or args.max_train_steps) * accelerator.num_processes,
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
            global_step = checkpoint_step(checkpoint)
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
    tokenizer = None
    if args.train_text_encoder:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.pretrained_model_name_or_path, subfolder="tokenizer")
    module.train()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:  # resumed from the last checkpoint: nothing left to train
            break
        loader, first_batch = train_dataloader, 0
        if epoch == first_epoch and resume_batches:
            loader, first_batch = accelerator.skip_first_batches(train_dataloader, resume_batches), resume_batches
        loader.set_epoch(epoch)  # the sampler's order of this epoch (accelerate's loaders reset it on iteration)
        for batch_index, batch in enumerate(loader, start=first_batch):
            generator = step_generator(args.seed, epoch, batch_index, accelerator.process_index)
            modality_generator = step_generator(args.seed, epoch, batch_index, EVERY_RANK)
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss, logs = training_loss(
                        module, batch, args, generator, empty_prompt_embeds, region_names, query_regions,
                        accelerator.device, weight_dtype if args.lora_rank else torch.float32, modality_generator,
                        tokenizer,
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm)
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
                    save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
                    logger.info(f"saved checkpoint-{global_step}")
                if args.validation_steps and global_step % args.validation_steps == 0:
                    log_validation(accelerator, args, module, info, global_step)
            if global_step >= args.max_train_steps:
                break

    # 6. Save what was trained, from the weights in memory (gathering FSDP shards is collective: every rank)
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(module)
    state_dict = accelerator.get_state_dict(module)
    if state_dict:  # every rank, except under FSDP (gathered on the main process only)
        logger.info(
            f"rank {accelerator.process_index} trainable checksum {trainable_checksum(trained, state_dict)}",
            main_process_only=False,
        )
    if accelerator.is_main_process:
        save_final(args, trained, state_dict)
    accelerator.end_training()


if __name__ == "__main__":
    main()
