"""What makes a training epoch over an in-memory set or an ImageFolder restartable at any step.

- :class:`EpochSampler` draws the epoch's order from ``(seed, epoch)`` alone, splits it over ranks as
  ``DistributedSampler`` does, and starts at a given step: the data position is one integer.
- :class:`SeededSamples` seeds every sample's augmentation from ``(seed, epoch, index)``, so an image comes out
  the same whichever worker decodes it, however many workers there are, and whether or not the run was stopped
  and resumed before it.

Together they replace what torchdata's ``StatefulDataLoader`` would hold (its sampler and per-worker states):
the position does not depend on the number of workers, so ``--workers`` may change on resume.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from mixconv.data.seeding import sample_seed, seeded


class EpochSampler(Sampler[int]):
    """The epoch's shuffled indices for ``rank`` of ``world_size``, from step ``start_step`` on.

    The order is padded by repeating its start to a multiple of ``world_size`` (every rank the same number of
    steps), then rank ``r`` takes every ``world_size``-th index from ``r``; with ``drop_last`` the rank's share
    is cut to whole batches.
    """

    def __init__(self, n: int, rank: int, world_size: int, batch_size: int, seed: int = 0,
                 drop_last: bool = True) -> None:
        self.n, self.rank, self.world_size, self.batch_size = n, rank, world_size, batch_size
        self.seed, self.drop_last = seed, drop_last
        per_rank = math.ceil(n / world_size)
        self.steps_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        self.per_rank = self.steps_per_epoch * batch_size if drop_last else per_rank
        self.epoch, self.start_step = 0, 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        total = math.ceil(self.n / self.world_size) * self.world_size
        order += (order * math.ceil(total / max(self.n, 1)))[: total - self.n]
        mine = order[self.rank:total:self.world_size][: self.per_rank]
        return iter(mine[self.start_step * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_step * self.batch_size)


class SeededSamples(Dataset):
    """``dataset`` whose item ``i`` is made under the torch seed ``(seed, epoch, i)`` (set by
    :meth:`set_epoch`); the caller's random state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.classes = list(getattr(dataset, "classes"))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with seeded(self.seed, self.epoch, i):
            return self.dataset[i]
