"""The reusable parts of `training_scripts/train_syncdreamer.py`: the trained modules as one `nn.Module`, the resumable
data order, and checkpoints that hold what was trained in the format the pipeline loads."""

from .checkpointing import (
    checkpoint_step,
    list_checkpoints,
    load_trained,
    register_checkpoint_hooks,
    remove_stale_temporaries,
    save_checkpoint,
    save_trained,
    trainable_checksum,
)
from .module import SyncDreamerTrainingModule
from .sampler import EVERY_RANK, EpochShuffleSampler, PairedShuffleSampler, step_generator

__all__ = [
    "EVERY_RANK",
    "EpochShuffleSampler",
    "PairedShuffleSampler",
    "SyncDreamerTrainingModule",
    "checkpoint_step",
    "list_checkpoints",
    "load_trained",
    "register_checkpoint_hooks",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_trained",
    "step_generator",
    "trainable_checksum",
]
