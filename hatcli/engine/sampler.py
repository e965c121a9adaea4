"""A seeded sampler whose order depends only on (seed, epoch), so any epoch can be replayed."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled (or in order) indices for one epoch; ``set_epoch`` picks the permutation.

    ``keyed`` yields ``(index, epoch)`` pairs, for a ``TransformedDataset`` whose random
    draws depend on the epoch. With several processes each takes every
    ``world_size``-th index of the epoch's order, starting at its ``rank``; ``pad``
    repeats the first indices so every rank gets as many (training), without it the
    ranks split the data exactly (validation).
    """

    def __init__(
        self,
        data: Sized,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        keyed: bool = False,
    ) -> None:
        self.total = len(data)
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        per_rank = -(-self.total // world_size)
        self.size = per_rank if pad else len(range(rank, self.total, world_size))
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.keyed = keyed

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, from its ``start``-th index (a resumed epoch)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[Any]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.total, generator=generator)
        else:
            order = torch.arange(self.total)
        if self.pad and self.world_size > 1:
            extra = self.size * self.world_size - self.total
            order = torch.cat([order, order[:extra]])
        mine = order[self.rank :: self.world_size]
        indices = mine[self.start :].tolist()
        if self.keyed:
            return iter([(index, self.epoch) for index in indices])
        return iter(indices)

    def __len__(self) -> int:
        # The whole epoch, also when resumed part-way: len(loader) is the epoch's length.
        return self.size


class WorkerSeeder:
    """A loader worker's ``worker_init_fn``: seeds the worker's global RNGs (torch,
    numpy, random) from the run's seed, the epoch its loader started, the rank and the
    worker's id, for datasets that draw from them. (hat's transforms draw from a
    generator of their own per sample, exact whatever the workers.)"""

    def __init__(self, seed: int, sampler: EpochSampler) -> None:
        self.seed = seed
        self.sampler = sampler

    def __call__(self, worker_id: int) -> None:
        words = [self.seed & 0xFFFFFFFF, self.sampler.epoch, self.sampler.rank, worker_id]
        state = np.random.SeedSequence(words).generate_state(2, np.uint32)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        np.random.seed(int(state[0]))
        random.seed(int(state[1]))
