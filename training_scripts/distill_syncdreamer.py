#!/usr/bin/env python
"""Distil a SyncDreamer pipeline into a few-step student that runs ONE transformer pass per denoising step.

Method: reflow (rectified-flow) trajectory distillation with the guidance baked in, as InstaFlow distils Stable
Diffusion (Liu et al., "Flow Straight and Fast", ICLR 2023; "InstaFlow", ICLR 2024), with classifier-free guidance
folded into the teacher's trajectories (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023). Why this
method and what it measured: `training_scripts/FAST_STUDENT.md`.

1. Teacher pairs. `--num_pairs` cached windows (the latent cache of `train_syncdreamer.py`), each conditioned exactly
   as the pipeline conditions a window (the reference sink when the pipeline has `reference_sink`, the known first
   frame or `num_motion_frames` of carried motion latents noised to the pipeline's `motion_latent_noise`, the prompt
   zero-padded to its `default_max_sequence_length`), are denoised by the teacher from seeded noise z with its own
   scheduler, steps and text + audio guidance (the pipeline's three passes per step) into x0. The pairs
   (z, x0, condition) are written to `WORK_DIR/teacher_pairs/`; a rerun keeps the finished ones.
2. Student. A copy of the teacher learns the straight path of each pair, x_s = (1 - s) x0 + s z with velocity
   z - x0, at the exact (sigma, timestep) points of its own `--student_steps` schedules, with ONE conditioned pass
   (prompt + audio + identity): the pipeline with `guidance_scale=1` and `audio_guidance_scale=1` runs exactly that
   pass and no other. The loss is training's region-weighted flow-matching MSE (`--region_weights`); full
   fine-tuning, or `--lora_rank R` (LoRA fused into the weights at the end).
3. `OUTPUT_DIR`: a pipeline folder (`SyncDreamerPipeline.from_pretrained`) with the student, a few-step scheduler
   (UniPC with evenly spaced flow sigmas, first order: an N-step schedule spends all N passes on real steps, which
   `FlowMatchEulerDiscreteScheduler`'s does not: its last sigma is ~0.01) and its sampling defaults
   (`default_num_inference_steps`, `default_guidance_scale=1.0`, `default_audio_guidance_scale=1.0`).

    accelerate launch training_scripts/distill_syncdreamer.py --pretrained_model_name_or_path TEACHER \
        --cache_dir CACHE_DIR --output_dir runs/student --num_pairs 512 --max_train_steps 1000

Checkpoints (`WORK_DIR/checkpoint-N/`, `--resume_from_checkpoint latest`) and mixed precision work as in
`train_syncdreamer.py`; `--work_dir` defaults to `--output_dir`.
"""

import argparse
import functools
import inspect
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UniPCMultistepScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils.torch_utils import randn_tensor
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from syncdreamer_hf.atomic import atomic_write_text
from syncdreamer_hf.data.latent_cache import CachedWindowDataset, atomic_save_tensors, collate_windows, pad_tokens
from syncdreamer_hf.losses import add_flow_noise, flow_matching_target, region_weighted_flow_matching_loss
from syncdreamer_hf.model_cards import write_model_card
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.training import (
    EpochShuffleSampler,
    SyncDreamerTrainingModule,
    checkpoint_step,
    list_checkpoints,
    register_checkpoint_hooks,
    remove_stale_temporaries,
    save_checkpoint,
    step_generator,
)
from syncdreamer_hf.training.options import optimizer_class, parse_region_weights

logger = get_logger(__name__)

PAIRS_DIR = "teacher_pairs"
RECORD_FILE = "distill_record.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="the teacher: a SyncDreamer pipeline.")
    parser.add_argument(
        "--cache_dir", required=True, help="latent cache of the teacher's encoders (`syncdreamer preprocess`)."
    )
    parser.add_argument("--output_dir", default="syncdreamer-student", help="the student pipeline folder.")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="teacher pairs, checkpoints and logs (default: --output_dir; give another folder to keep the pipeline "
        "folder clean).",
    )
    # 1. teacher pairs
    parser.add_argument(
        "--num_pairs", type=int, default=512, help="cached windows the teacher denoises (one noise each)."
    )
    parser.add_argument("--pair_batch_size", type=int, default=8, help="windows the teacher denoises at once.")
    parser.add_argument("--teacher_num_inference_steps", type=int, default=None, help="default: the teacher's config.")
    parser.add_argument("--teacher_guidance_scale", type=float, default=None, help="default: the teacher's config.")
    parser.add_argument(
        "--teacher_audio_guidance_scale", type=float, default=None, help="default: the teacher's config."
    )
    parser.add_argument(
        "--teacher_guidance_end", type=float, default=None,
        help="fraction of the teacher's steps, from the noisiest, with text guidance; default: the teacher's config.",
    )
    parser.add_argument(
        "--motion_condition_prob",
        type=float,
        default=0.7,
        help="P(a window knows the pipeline's carried motion latents instead of its first frame); later windows are "
        "most of a long video.",
    )
    # 2. student
    parser.add_argument("--student_steps", type=int, nargs="+", default=[1, 2, 4], help="schedules trained at once.")
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="the student's default (default: max of --student_steps)."
    )
    parser.add_argument(
        "--scheduler_shift",
        type=float,
        default=None,
        help="flow shift of the student's schedule (default: the teacher's, else 3).",
    )
    parser.add_argument("--region_weights", default="", help='e.g. "mouth=20,hands=10" (needs cached masks).')
    parser.add_argument("--lora_rank", type=int, default=0, help="LoRA rank on the transformer; 0: full fine-tuning.")
    parser.add_argument("--lora_alpha", type=float, default=None)
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lr_scheduler", default="constant")
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--use_8bit_adam", action="store_true")
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest".')
    parser.add_argument("--report_to", default="tensorboard", help='accelerate tracker(s), or "none".')
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--model_card_title", default="SyncDreamer few-step student")
    args = parser.parse_args(argv)
    args.region_weights = parse_region_weights(args.region_weights)
    if not 0 <= args.motion_condition_prob <= 1:
        parser.error("--motion_condition_prob must lie in [0, 1].")
    if min(args.student_steps) < 1:
        parser.error("--student_steps must be positive.")
    args.num_inference_steps = args.num_inference_steps or max(args.student_steps)
    return args


def pipeline_settings(pipeline) -> dict:
    """The pipeline config of a folder or Hub id (sampling defaults, windows, `reference_sink`, ...), with the
    pipeline's own defaults for the keys an older folder lacks; no component is loaded."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(SyncDreamerPipeline.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty and parameter.default is not None
    }
    saved = SyncDreamerPipeline.load_config(pipeline)
    return {name: saved.get(name, default) for name, default in defaults.items()}


def load_scheduler(pipeline):
    """The teacher's scheduler, of whichever class its folder names."""
    import diffusers

    class_name = SyncDreamerPipeline.load_config(pipeline)["scheduler"][1]
    return getattr(diffusers, class_name).from_pretrained(pipeline, subfolder="scheduler")


def student_scheduler(teacher_scheduler, shift: float | None = None) -> UniPCMultistepScheduler:
    """First-order UniPC on flow sigmas: evenly spaced sigmas in [1, 0) (Euler steps on a straight path) with the
    teacher's flow shift unless `shift` is given."""
    shift = shift or teacher_scheduler.config.get("flow_shift") or teacher_scheduler.config.get("shift") or 3.0
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=1,
        num_train_timesteps=teacher_scheduler.config.num_train_timesteps,
    )


def schedule_points(scheduler, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (sigma, timestep) at which the pipeline calls the transformer with `scheduler` at each of `steps`
    steps: `(sigmas (P,), timesteps (P,))`, the points the student is trained at."""
    sigmas, timesteps = [], []
    for num_steps in steps:
        scheduler.set_timesteps(num_steps)
        sigmas.append(scheduler.sigmas[:num_steps].float())
        timesteps.append(scheduler.timesteps[:num_steps].float())
    return torch.cat(sigmas), torch.cat(timesteps)


def window_condition(
    latents: torch.Tensor,
    reference_latents: torch.Tensor | None,
    num_known: int,
    motion_latent_noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The pipeline's conditioning of a window, built from a cached window.

    Args:
        latents: `(B, 16, T, h, w)`, the window's latents; its first `num_known` frames are the known ones: the
            reference frame (`num_known == 1`, the pipeline's first window) or the motion latents carried from the
            previous window, which the pipeline noises to `motion_latent_noise`.
        reference_latents: `(B, 16, 1, h, w)` for a pipeline with `reference_sink` (prepended as a known frame), or
            None.

    Returns:
        `(B, 20, [1 +] T, h, w)`, from `SyncDreamerPipeline.prepare_condition`.
    """
    known_latents = latents[:, :, :num_known]
    if num_known > 1 and motion_latent_noise > 0:
        noise = randn_tensor(known_latents.shape, generator=generator, dtype=known_latents.dtype)
        known_latents = add_flow_noise(
            known_latents, noise, known_latents.new_full((len(latents),), motion_latent_noise)
        )
    num_latent_frames = latents.shape[2]
    if reference_latents is not None:
        known_latents = SyncDreamerPipeline.add_reference_sink(reference_latents, known_latents)
        num_latent_frames += 1
    return SyncDreamerPipeline.prepare_condition(known_latents, num_latent_frames)


def guided_velocity(
    teacher,
    model_input,
    timestep,
    prompt_embeds,
    negative_prompt_embeds,
    image_embeds,
    audio_hidden_states,
    guidance_scale: float,
    audio_guidance_scale: float,
    num_sink_frames: int,
) -> torch.Tensor:
    """The velocity the pipeline steps with, text and audio guidance combined as `SyncDreamerPipeline.__call__`
    combines them: the passes that hear the audio (prompt, negative prompt) as one batch, then the negative prompt
    without audio. `teacher` is a `SyncDreamerTrainingModule` (cached encoder outputs in); shapes as its forward."""
    text_guidance, audio_guidance = guidance_scale > 1, audio_guidance_scale > 1
    audio_pass_text = torch.cat([prompt_embeds, negative_prompt_embeds]) if text_guidance else prompt_embeds
    num_passes = audio_pass_text.shape[0] // prompt_embeds.shape[0]
    velocity, _ = teacher(
        model_input.repeat(num_passes, 1, 1, 1, 1),
        timestep.repeat(num_passes),
        audio_pass_text,
        image_embeds.repeat(num_passes, 1, 1),
        audio_hidden_states.repeat(num_passes, 1, 1, 1),
        num_sink_frames=num_sink_frames,
    )
    if text_guidance:
        velocity_cond, velocity_with_audio = velocity.chunk(2)
        velocity = velocity_with_audio + guidance_scale * (velocity_cond - velocity_with_audio)
    else:
        velocity_with_audio = velocity
    if audio_guidance:
        velocity_silent, _ = teacher(
            model_input,
            timestep,
            negative_prompt_embeds if text_guidance else prompt_embeds,
            image_embeds,
            None,
            num_sink_frames=num_sink_frames,
        )
        velocity = velocity + (audio_guidance_scale - 1) * (velocity_with_audio - velocity_silent)
    return velocity


@torch.no_grad()
def teacher_sample(
    teacher, scheduler, noise, condition, num_inference_steps: int, dtype=torch.float32, guidance_end: float = 1.0,
    **guidance,
):
    """The teacher's sample of a batch of windows: `noise (B, 16, T', h, w)` denoised with `scheduler` (its state is
    reset) and `guided_velocity(**guidance)` as the pipeline's denoising loop does, text guidance in the first
    `guidance_end` of the steps only (the pipeline's `guidance_end`); returns `(B, 16, T', h, w)`."""
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    num_guided_steps = round(guidance_end * num_inference_steps)
    latents = noise
    for i, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([latents, condition], dim=1).to(dtype)
        step_guidance = guidance if i < num_guided_steps else {**guidance, "guidance_scale": 1.0}
        velocity = guided_velocity(teacher, model_input, t.expand(len(latents)), **step_guidance)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


def teacher_sampling(args, settings: dict) -> tuple[int, dict]:
    """The teacher's steps and `{guidance_scale, audio_guidance_scale, guidance_end}`: its config's defaults unless
    overridden."""
    steps = args.teacher_num_inference_steps or settings["default_num_inference_steps"]
    guidance = {
        "guidance_scale": settings["default_guidance_scale"]
        if args.teacher_guidance_scale is None
        else args.teacher_guidance_scale,
        "audio_guidance_scale": settings["default_audio_guidance_scale"]
        if args.teacher_audio_guidance_scale is None
        else args.teacher_audio_guidance_scale,
        "guidance_end": settings["default_guidance_end"] if args.teacher_guidance_end is None else args.teacher_guidance_end,
    }
    return steps, guidance


def pair_generator(seed: int, index: int) -> torch.Generator:
    """The generator of pair `index`: its known-frame choice, motion-latent noise and initial noise."""
    return torch.Generator().manual_seed(hash((seed, index)) % 2**63)  # ints: the same in every process


def generate_teacher_pairs(accelerator, args, teacher, dataset, settings, pair_dir: Path) -> None:
    """Writes `pair_dir/pair_<i>.safetensors` (`noise`, `teacher_latents`, `condition`, each `(16 or 20, T', h, w)`,
    and the cached window's file name) for the first `--num_pairs` windows of a seeded order; every process
    denoises its share; finished pairs are skipped."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
    order = order[: args.num_pairs]
    todo = [i for i in range(len(order)) if not (pair_dir / f"pair_{i:06d}.safetensors").is_file()]
    mine = todo[accelerator.process_index :: accelerator.num_processes]
    num_motion_latents = settings["num_motion_frames"] // teacher.audio_dynamics_encoder.config.temporal_stride
    num_sink_frames = int(settings["reference_sink"])
    scheduler = load_scheduler(args.pretrained_model_name_or_path)
    steps, guidance = teacher_sampling(args, settings)
    device, dtype, channels = accelerator.device, teacher.transformer.dtype, teacher.transformer.config.out_channels
    empty = pad_tokens(dataset.empty_prompt_embeds, settings["default_max_sequence_length"])
    logger.info(f"teacher pairs: {len(order) - len(todo)} done, {len(todo)} to denoise ({steps} steps, {guidance})")
    start = time.perf_counter()
    progress = tqdm(total=len(mine), desc="teacher pairs", disable=not accelerator.is_local_main_process)
    for first in range(0, len(mine), args.pair_batch_size):
        indices = mine[first : first + args.pair_batch_size]
        samples = [dataset[order[i]] for i in indices]
        batch = collate_windows(samples, settings["default_max_sequence_length"], len(dataset.region_names))
        conditions, noises = [], []
        for row, index in enumerate(indices):
            generator = pair_generator(args.seed, index)
            num_known = num_motion_latents if torch.rand((), generator=generator) < args.motion_condition_prob else 1
            reference = batch["reference_latents"][row : row + 1] if num_sink_frames else None
            conditions.append(
                window_condition(
                    batch["latents"][row : row + 1], reference, num_known, settings["motion_latent_noise"], generator
                )
            )
            noises.append(randn_tensor((1, channels, *conditions[-1].shape[2:]), generator=generator))
        condition, noise = torch.cat(conditions).to(device), torch.cat(noises).to(device)
        with accelerator.autocast():
            latents = teacher_sample(
                teacher,
                scheduler,
                noise,
                condition,
                steps,
                dtype,
                prompt_embeds=batch["prompt_embeds"].to(device, dtype),
                negative_prompt_embeds=empty.expand(len(indices), -1, -1).to(device, dtype),
                image_embeds=batch["image_embeds"].to(device, dtype),
                audio_hidden_states=batch["audio_hidden_states"].to(device, dtype),
                num_sink_frames=num_sink_frames,
                **guidance,
            )
        for row, index in enumerate(indices):
            atomic_save_tensors(
                {"noise": noise[row], "teacher_latents": latents[row].float(), "condition": condition[row]},
                pair_dir / f"pair_{index:06d}.safetensors",
                {"window": dataset.files[order[index]].name},
            )
        progress.update(len(indices))
    progress.close()
    if mine:
        logger.info(
            f"process {accelerator.process_index}: {len(mine)} pairs in {time.perf_counter() - start:.0f} s",
            main_process_only=False,
        )


class TeacherPairDataset(Dataset):
    """The teacher pairs with their cached windows: `dataset[i]` is the window's sample (`CachedWindowDataset`)
    plus `noise`, `teacher_latents` and `condition`."""

    def __init__(self, pair_dir, windows: CachedWindowDataset):
        self.files = sorted(Path(pair_dir).glob("pair_*.safetensors"))
        self.windows = windows
        self.window_index = {path.name: index for index, path in enumerate(windows.files)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with safe_open(self.files[index], framework="pt") as handle:
            pair = {name: handle.get_tensor(name) for name in handle.keys()}
            window = handle.metadata()["window"]
        return {**self.windows[self.window_index[window]], **pair}


def collate_pairs(samples: list[dict], max_sequence_length: int, num_regions: int) -> dict:
    """`collate_windows` plus the stacked `noise`, `teacher_latents` `(B, 16, T', h, w)` and `condition`."""
    batch = collate_windows(samples, max_sequence_length, num_regions)
    for name in ("noise", "teacher_latents", "condition"):
        batch[name] = torch.stack([sample[name] for sample in samples])
    return batch


def distillation_loss(
    module, batch, sigmas, timesteps, generator, region_names, region_weights, num_sink_frames, device, dtype
):
    """The reflow loss of one micro-batch: each window at one of the student's (sigma, timestep) points (drawn with
    `generator`) on the straight line between its noise and the teacher's sample; the student's one conditioned
    pass predicts the line's velocity. The sink frame is left out of the loss, as in training. Returns
    `(loss, logs)`."""
    teacher_latents, noise = batch["teacher_latents"].to(device), batch["noise"].to(device)
    choice = torch.randint(len(sigmas), (len(noise),), generator=generator)
    noisy_latents = add_flow_noise(teacher_latents, noise, sigmas[choice].to(device))
    target = flow_matching_target(teacher_latents, noise)
    model_input = torch.cat([noisy_latents, batch["condition"].to(device)], dim=1).to(dtype)
    velocity, _ = module(
        model_input,
        timesteps[choice].to(device),
        batch["prompt_embeds"].to(device, dtype),
        batch["image_embeds"].to(device, dtype),
        batch["audio_hidden_states"].to(device, dtype),
        num_sink_frames=num_sink_frames,
    )
    region_masks = batch["region_masks"].to(device) if batch["region_masks"] is not None else None
    loss = region_weighted_flow_matching_loss(
        velocity[:, :, num_sink_frames:], target[:, :, num_sink_frames:], region_masks, region_names, region_weights
    )
    return loss, {"loss": loss.detach().item()}


def load_record(work_dir: Path) -> dict:
    """The run's wall times and last loss so far (`WORK_DIR/distill_record.json`), kept across resumed runs."""
    path = work_dir / RECORD_FILE
    return (
        json.loads(path.read_text())
        if path.is_file()
        else {"teacher_pairs_seconds": 0.0, "train_seconds": 0.0, "loss": None}
    )


def save_record(work_dir: Path, record: dict) -> None:
    atomic_write_text(work_dir / RECORD_FILE, json.dumps(record, indent=2))


def model_card_note(args, summary: dict) -> str:
    """The card's account of the distillation: teacher, pairs, training, wall times, the command."""
    guidance = summary["teacher_guidance"]
    text_guidance = f"text guidance {guidance['guidance_scale']:g}" + (
        f" in the first {guidance['guidance_end']:.0%} of them" if guidance["guidance_end"] < 1 else ""
    )
    return "\n".join(
        [
            f"Distilled from `{summary['teacher']}` by `training_scripts/distill_syncdreamer.py` (reflow with the teacher's "
            f"guidance baked in): {summary['num_pairs']} teacher pairs (cached windows denoised by the teacher with "
            f"{summary['teacher_steps']} steps, {text_guidance} and audio guidance {guidance['audio_guidance_scale']:g}: "
            f"3 transformer passes per step), then {summary['train_steps']} "
            f"steps of batch {summary['train_batch_size']} on the straight paths at the sigmas of the "
            f"{'/'.join(map(str, summary['student_steps']))}-step schedules; final loss {summary['final_loss']:.4f}.",
            "",
            f"- sampling defaults: {args.num_inference_steps} steps, `guidance_scale=1.0`, `audio_guidance_scale=1.0` "
            "(one transformer pass per step; the guidance is in the weights).",
            f"- wall time (the threads and machine load of the run): teacher pairs "
            f"{summary['teacher_pairs_seconds'] / 60:.1f} min, training {summary['train_seconds'] / 60:.1f} min.",
            "",
            "Distillation command:",
            "",
            "```bash",
            summary["command"],
            "```",
        ]
    )


def save_student(args, student, scheduler, summary: dict) -> SyncDreamerPipeline:
    """`--output_dir` becomes a pipeline folder: the teacher's frozen components, the student's trained ones, the
    few-step scheduler and the student's sampling defaults, with a model card; `distillation.json` records how it
    was made."""
    if student.is_lora:
        student.transformer.fuse_lora()
        student.transformer.unload_lora()
    pipe = SyncDreamerPipeline.from_pretrained(
        args.pretrained_model_name_or_path,
        transformer=student.transformer,
        visual_adapter=student.visual_adapter,
        audio_dynamics_encoder=student.audio_dynamics_encoder,
        scheduler=scheduler,
    )
    pipe.register_to_config(
        default_num_inference_steps=args.num_inference_steps,
        default_guidance_scale=1.0,
        default_audio_guidance_scale=1.0,
    )
    output_dir = Path(args.output_dir)
    pipe.save_pretrained(output_dir)
    write_model_card(
        output_dir,
        pipe,
        title=args.model_card_title,
        weights_note=model_card_note(args, summary),
        summary=f"A few-step student of `{summary['teacher']}`: one transformer pass per denoising step, "
        f"{args.num_inference_steps} steps by default.",
    )
    (output_dir / "distillation.json").write_text(json.dumps(summary, indent=2))
    return pipe


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    work_dir = Path(args.work_dir or args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(work_dir), logging_dir=str(work_dir / args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        (work_dir / PAIRS_DIR).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(work_dir)
    accelerator.wait_for_everyone()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    settings = pipeline_settings(args.pretrained_model_name_or_path)
    num_sink_frames = int(settings["reference_sink"])
    windows = CachedWindowDataset(args.cache_dir)
    if num_sink_frames and "reference_latents" not in windows[0]:
        raise ValueError(
            f"{args.pretrained_model_name_or_path} has `reference_sink`: its windows need the cache's `reference_latents`, "
            f"which {args.cache_dir} lacks; rebuild the cache with `syncdreamer preprocess`."
        )
    record = load_record(work_dir)  # wall times and loss, summed over resumed runs

    # 1. Teacher pairs (the frozen teacher is freed afterwards)
    start = time.perf_counter()
    teacher = SyncDreamerTrainingModule.from_pretrained(
        args.pretrained_model_name_or_path, transformer_dtype=weight_dtype
    )
    teacher.requires_grad_(False).eval().to(accelerator.device)
    generate_teacher_pairs(accelerator, args, teacher, windows, settings, work_dir / PAIRS_DIR)
    del teacher
    accelerator.wait_for_everyone()
    record["teacher_pairs_seconds"] += time.perf_counter() - start
    if accelerator.is_main_process:
        save_record(work_dir, record)

    # 2. Student: the teacher's weights, trained on the straight paths
    module = SyncDreamerTrainingModule.from_pretrained(
        args.pretrained_model_name_or_path, transformer_dtype=weight_dtype if args.lora_rank else torch.float32
    )
    module.set_trainable(2, args.lora_rank, args.lora_alpha)
    cast_training_params(module, dtype=torch.float32)
    if args.gradient_checkpointing:
        module.transformer.enable_gradient_checkpointing()
    register_checkpoint_hooks(accelerator, args.pretrained_model_name_or_path)
    scheduler = student_scheduler(load_scheduler(args.pretrained_model_name_or_path), args.scheduler_shift)
    sigmas, timesteps = schedule_points(scheduler, args.student_steps)
    logger.info(f"student trained at sigmas {[round(s, 3) for s in sigmas.tolist()]}")

    dataset = TeacherPairDataset(work_dir / PAIRS_DIR, windows)
    loader = DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=EpochShuffleSampler(len(dataset), args.seed),
        collate_fn=functools.partial(
            collate_pairs,
            max_sequence_length=settings["default_max_sequence_length"],
            num_regions=len(windows.region_names),
        ),
    )
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    optimizer = optimizer_class(args.use_8bit_adam)(
        trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    module, optimizer, loader, lr_scheduler = accelerator.prepare(module, optimizer, loader, lr_scheduler)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if accelerator.is_main_process:
        accelerator.init_trackers("syncdreamer-distill", config={k: str(v) for k, v in vars(args).items()})

    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoints = list_checkpoints(work_dir)
        checkpoint = (
            (checkpoints or [None])[-1]
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            global_step = checkpoint_step(checkpoint)
            first_epoch = global_step // steps_per_epoch
            resume_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
            logger.info(f"resumed from {checkpoint} at step {global_step}")

    start, train_seconds_before = time.perf_counter(), record["train_seconds"]
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="distill", disable=not accelerator.is_local_main_process
    )
    module.train()
    epoch = first_epoch
    while global_step < args.max_train_steps:
        epoch_loader, first_batch = loader, 0
        if epoch == first_epoch and resume_batches:
            epoch_loader, first_batch = accelerator.skip_first_batches(loader, resume_batches), resume_batches
        epoch_loader.set_epoch(epoch)
        for batch_index, batch in enumerate(epoch_loader, start=first_batch):
            generator = step_generator(args.seed, epoch, batch_index, accelerator.process_index)
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss, logs = distillation_loss(
                        module,
                        batch,
                        sigmas,
                        timesteps,
                        generator,
                        windows.region_names,
                        args.region_weights,
                        num_sink_frames,
                        accelerator.device,
                        weight_dtype if args.lora_rank else torch.float32,
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log({**logs, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
                if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                    save_checkpoint(accelerator, work_dir, global_step, args.checkpoints_total_limit)
                    record.update(train_seconds=train_seconds_before + time.perf_counter() - start, loss=logs["loss"])
                    if accelerator.is_main_process:
                        save_record(work_dir, record)
            if global_step >= args.max_train_steps:
                break
        epoch += 1

    # 3. The student pipeline
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        teacher_steps, teacher_guidance = teacher_sampling(args, settings)
        teacher_sampling_summary = {"teacher_steps": teacher_steps, "teacher_guidance": teacher_guidance}
        summary = {
            "teacher": str(args.pretrained_model_name_or_path),
            "cache_dir": str(args.cache_dir),
            "num_pairs": len(dataset),
            "train_steps": global_step,
            "train_batch_size": args.train_batch_size,
            "student_steps": args.student_steps,
            "sigmas": sigmas.tolist(),
            "final_loss": record["loss"],
            "teacher_pairs_seconds": round(record["teacher_pairs_seconds"], 1),
            "train_seconds": round(record["train_seconds"], 1),
            **teacher_sampling_summary,
            "command": (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else "")
            + "python training_scripts/distill_syncdreamer.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
        }
        save_student(args, accelerator.unwrap_model(module), scheduler, summary)
        logger.info(f"saved the student pipeline to {output_dir}: {summary}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
