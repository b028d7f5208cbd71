"""Checkpoints of a training run that hold what was trained, in the format the pipeline loads.

`checkpoint-<step>/` (and the run's final output folder) holds:

- LoRA run: `pytorch_lora_weights.safetensors` (for `pipe.load_lora_weights`), `transformer_new_branches.safetensors`
  and the fully trained `visual_adapter/` (and, in stage 2, `audio_dynamics_encoder/`): all of it loads with
  `pipe.load_trained_modules(folder)`;
- full run: a pipeline folder (`SyncDreamerPipeline.from_pretrained(folder)`): the trained models written with
  `save_pretrained`, the frozen components hard-linked from the base pipeline (copied across file systems).

plus accelerate's optimizer, scheduler and RNG states to resume from. `register_checkpoint_hooks` makes
`accelerator.save_state` / `load_state` write and read the model weights this way, so accelerate writes no second
copy of the model; under FSDP accelerate still writes (and resumes from) its own model file, and the files above are
written next to it. Checkpoints are written to `.checkpoint-<step>.tmp` and renamed when complete, so a killed write
never leaves a `checkpoint-<step>` behind; the oldest ones beyond the limit are deleted only after that rename.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import init_empty_weights
from accelerate.utils import SAFE_WEIGHTS_NAME
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..pipeline_syncdreamer import NEW_BRANCHES_FILE, SyncDreamerPipeline
from .module import SyncDreamerTrainingModule

CHECKPOINT_PREFIX = "checkpoint-"
TEMPORARY_PATTERN = ".checkpoint-*.tmp"


def list_checkpoints(output_dir) -> list[Path]:
    """Finished checkpoints `checkpoint-<step>`, oldest first (temporary `.checkpoint-*` folders are ignored)."""
    found = [
        path
        for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if path.is_dir() and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    ]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path) -> int:
    return int(Path(path).name.removeprefix(CHECKPOINT_PREFIX))


def remove_stale_temporaries(output_dir) -> list[Path]:
    """Deletes the `.checkpoint-*.tmp` folders that killed or failed checkpoint writes left behind."""
    stale = sorted(Path(output_dir).glob(TEMPORARY_PATTERN))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: int | None = None) -> Path:
    """`accelerator.save_state` into `.checkpoint-<step>.tmp`, renamed to `checkpoint-<step>` when complete; then
    the oldest finished checkpoints beyond `total_limit` are deleted. A kill at any moment leaves the previous
    checkpoint in place. Every rank must call it."""
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{global_step}"
    temporary = output_dir / f".{CHECKPOINT_PREFIX}{global_step}.tmp"
    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (a resumed run): move the old one aside first
            replaced = output_dir / f".{CHECKPOINT_PREFIX}{global_step}.replaced.tmp"
            os.replace(final, replaced)
            os.replace(temporary, final)
            shutil.rmtree(replaced)
        else:
            os.replace(temporary, final)
        if total_limit is not None:
            older = [path for path in list_checkpoints(output_dir) if path != final]
            for path in older[: max(0, len(older) + 1 - total_limit)]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


def trainable_checksum(module: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 of every trainable parameter's bytes (identical on every rank when DDP keeps them in sync); the values
    are taken from `state_dict` when given (a full state dict gathered from FSDP shards)."""
    values = dict(module.named_parameters()) if state_dict is None else state_dict
    digest = hashlib.sha256()
    for name, parameter in sorted(module.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(values[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# What was trained, in the pipeline's formats


def save_trained(
    module: SyncDreamerTrainingModule, output_dir, base_pipeline, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Writes what `module` trained into `output_dir`, in the format of the module docstring (main process only).

    Args:
        module: the unwrapped training module (`accelerator.unwrap_model`).
        base_pipeline: the pipeline folder or Hub id the run started from (a full run links its frozen components).
        state_dict: `module`'s full state dict when its live weights are sharded (`accelerator.get_state_dict`
            gathers FSDP shards); default `module.state_dict()`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state_dict = module.state_dict() if state_dict is None else state_dict
    parts = {name: {} for name in module.component_names}
    for key, tensor in state_dict.items():
        component, _, name = key.partition(".")
        parts[component][name] = tensor

    trained = module.fully_trained_components()
    if module.is_lora:
        from peft.utils import get_peft_model_state_dict

        transformer = module.transformer
        SyncDreamerPipeline.save_lora_weights(
            output_dir,
            transformer_lora_layers=get_peft_model_state_dict(transformer, state_dict=parts["transformer"]),
            transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        )
        save_file(transformer.new_branch_state_dict(parts["transformer"]), output_dir / NEW_BRANCHES_FILE)
    else:
        link_frozen_components(base_pipeline, output_dir, skip=trained)
    for name in trained:
        save_model_weights(getattr(module, name), parts[name], output_dir / name)


def load_trained(module: SyncDreamerTrainingModule, input_dir) -> None:
    """Loads what `save_trained` wrote into the live (unwrapped, unsharded) `module`: the inverse of `save_trained`."""
    input_dir = Path(input_dir)
    if module.is_lora:
        from peft import set_peft_model_state_dict

        lora = {
            key.removeprefix("transformer."): value
            for key, value in load_file(input_dir / LORA_WEIGHT_NAME_SAFE).items()
        }
        unexpected = set_peft_model_state_dict(module.transformer, lora, adapter_name="default").unexpected_keys
        if unexpected:
            raise ValueError(f"{input_dir / LORA_WEIGHT_NAME_SAFE} has LoRA weights the model lacks: {unexpected[:3]}")
        module.transformer.load_new_branch_state_dict(load_file(input_dir / NEW_BRANCHES_FILE))
    for name in module.fully_trained_components():
        load_model_weights(getattr(module, name), input_dir / name)


def save_model_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """`model.save_pretrained(directory)` with the weights of `state_dict`: a copy of `model` is built on the meta
    device from its config and given the tensors, so nothing is allocated and a sharded live model works too."""
    with init_empty_weights():
        build = type(model)._from_config if isinstance(model, PreTrainedModel) else type(model).from_config
        copy = build(model.config)
    copy.load_state_dict(state_dict, strict=True, assign=True)
    copy.save_pretrained(directory)


def load_model_weights(model: nn.Module, directory: Path) -> None:
    """Loads the weights `save_pretrained` wrote to `directory` (one file or shards) into `model`, one file at a time."""
    loaded = set()
    for path in sorted(Path(directory).glob("*.safetensors")):
        weights = load_file(path)
        model.load_state_dict(weights, strict=False)
        loaded.update(weights)
    current = model.state_dict(keep_vars=True)
    loaded_storage = {current[name].data_ptr() for name in loaded if name in current}
    # a tied weight (umT5's token embeddings) is saved once and loaded through the tensor it shares
    missing = sorted(name for name, value in current.items() if name not in loaded and value.data_ptr() not in loaded_storage)
    if missing:
        raise ValueError(f"{directory} lacks weights of {type(model).__name__}: {missing[:3]}")


def link_frozen_components(base_pipeline, output_dir: Path, skip: list[str]) -> None:
    """Makes `output_dir` a pipeline folder with the base pipeline's components except `skip`: its files hard-linked
    (no extra disk; copied where a link is impossible) and its `model_index.json` copied."""
    base = Path(base_pipeline)
    if not base.is_dir():
        base = Path(SyncDreamerPipeline.download(str(base_pipeline)))
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    for name in index:
        if name in skip or not (base / name).is_dir():
            continue
        for source in sorted((base / name).rglob("*")):
            target = output_dir / source.relative_to(base)
            if source.is_file() and not (target.exists() and os.path.samefile(source, target)):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    os.link(source.resolve(), target)
                except OSError:
                    shutil.copy2(source, target)
    if not (output_dir / "model_index.json").exists() or not os.path.samefile(base, output_dir):
        shutil.copy2(base / "model_index.json", output_dir / "model_index.json")


def register_checkpoint_hooks(accelerator, base_pipeline) -> None:
    """Makes `accelerator.save_state` / `load_state` write and read the prepared training module's weights with
    `save_trained` / `load_trained`. A checkpoint from before these hooks (accelerate's `model.safetensors`) still
    resumes: accelerate loads it."""

    def save_hook(models, weights, output_dir):
        (model,) = models
        state_dict = accelerator.get_state_dict(model)  # every rank: gathering FSDP shards is collective
        if weights:  # not under FSDP: this would be accelerate's own copy of the whole model
            weights.pop()
        if accelerator.is_main_process:
            save_trained(accelerator.unwrap_model(model), output_dir, base_pipeline, state_dict)

    def load_hook(models, input_dir):
        # under FSDP `models` is empty: accelerate has loaded its own model file
        if models and not (Path(input_dir) / SAFE_WEIGHTS_NAME).is_file():
            load_trained(accelerator.unwrap_model(models.pop()), input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
