"""What makes a resumed run draw exactly what an uninterrupted one would: the data order and the random numbers of a
micro-batch depend only on where it is in the run."""

import torch
from torch.utils.data import Sampler


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


# `step_generator`'s process index for the random decisions every rank must share
EVERY_RANK = -1


def step_generator(seed: int, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """The generator of one micro-batch's noise, timesteps and dropout decisions, from (seed, epoch, batch, rank);
    `process_index=EVERY_RANK` gives the one generator all ranks share at that micro-batch."""
    return torch.Generator().manual_seed(hash((seed, epoch, batch_index, process_index)) % 2**63)
