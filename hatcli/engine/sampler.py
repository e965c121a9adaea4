"""A seeded sampler whose order depends only on (seed, epoch), so any epoch can be replayed."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled (or in order) indices for one epoch; ``set_epoch`` picks the permutation."""

    def __init__(self, data: Sized, shuffle: bool, seed: int) -> None:
        self.size = len(data)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, from its ``start``-th index (a resumed epoch)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.start, self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator)[self.start :].tolist())

    def __len__(self) -> int:
        # The whole epoch, also when resumed part-way: len(loader) is the epoch's length.
        return self.size
