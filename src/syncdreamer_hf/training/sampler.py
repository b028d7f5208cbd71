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


class PairedShuffleSampler(EpochShuffleSampler):
    """`EpochShuffleSampler` that keeps each pair `(i, j)` next to each other, i first, at an even position of the
    order (the other samples fill the even slots two by two), so a batch of even size holds whole pairs.

    Its order is still a function of (seed, epoch) alone."""

    def __init__(self, num_samples: int, pairs: list[tuple[int, int]], seed: int):
        super().__init__(num_samples, seed)
        paired = [index for pair in pairs for index in pair]
        if len(set(paired)) != len(paired) or not all(0 <= index < num_samples for index in paired):
            raise ValueError("the pairs must be disjoint and index the samples.")
        self.pairs = [tuple(pair) for pair in pairs]
        self.unpaired = sorted(set(range(num_samples)) - set(paired))

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        unpaired = [self.unpaired[k] for k in torch.randperm(len(self.unpaired), generator=generator).tolist()]
        units = self.pairs + [tuple(unpaired[k : k + 2]) for k in range(0, len(unpaired), 2)]
        order = torch.randperm(len(units), generator=generator).tolist()
        if len(units[-1]) == 1:  # the odd sample out goes last, so that every pair stays at an even position
            order.remove(len(units) - 1)
            order.append(len(units) - 1)
        return iter([index for unit in order for index in units[unit]])


# `step_generator`'s process index for the random decisions every rank must share
EVERY_RANK = -1


def step_generator(seed: int, epoch: int, batch_index: int, process_index: int) -> torch.Generator:
    """The generator of one micro-batch's noise, timesteps and dropout decisions, from (seed, epoch, batch, rank);
    `process_index=EVERY_RANK` gives the one generator all ranks share at that micro-batch."""
    return torch.Generator().manual_seed(hash((seed, epoch, batch_index, process_index)) % 2**63)
