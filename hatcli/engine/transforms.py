"""A data split's ``transforms``: per-sample operations, each random draw from a generator
seeded by the sample's place (seed, epoch, rank, index), so a run and its resume, with
any number of loader workers, see the same augmented samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

Sample = Image.Image | torch.Tensor
"""What a transform takes and gives: a PIL image, or a CxHxW tensor."""


class Transform:
    """What a ``hat_register_transforms`` factory returns. Subclass it.

    hat calls ``transform(sample, generator)`` for each sample of a split that lists it,
    in the list's order. Draw every random number from ``generator`` (never from the
    global RNG): that is what makes augmentation reproducible and resume exact.
    """

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        """The sample transformed: a PIL image or a CxHxW tensor."""
        raise NotImplementedError


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a float32 CxHxW tensor in [0, 1] (torchvision's ``ToTensor``)."""
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor.contiguous().float().div_(255.0)


def as_image(sample: Sample, name: str) -> Image.Image:
    """``sample`` when it is a PIL image; a clear error for a tensor (``name`` is the
    transform's)."""
    if isinstance(sample, Image.Image):
        return sample
    raise TypeError(
        f"{name} works on images, but this sample is a tensor; put {name} before ToTensor "
        "and Normalize, on a dataset that gives images (ImageFolder, Cifar10)"
    )


def as_tensor(sample: Sample) -> torch.Tensor:
    return to_tensor(sample) if isinstance(sample, Image.Image) else sample


def sample_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    """The seed of one sample's generator: a hash of where the sample is drawn."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, epoch, rank, index]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


class TransformedDataset(Dataset[tuple[Any, Any]]):
    """``dataset`` with ``transforms`` applied to each input, in order.

    Indexed by ``(index, epoch)`` (``EpochSampler(keyed=True)`` gives those) or by a
    plain index (epoch 0). The dataset's ``image(index)`` is used when it has one, so
    image transforms see the picture before any conversion; an image left at the end is
    converted with ``to_tensor``.
    """

    def __init__(
        self, dataset: Any, transforms: Sequence[Transform], seed: int, rank: int = 0
    ) -> None:
        self.dataset = dataset
        self.transforms = list(transforms)
        self.seed = seed
        self.rank = rank
        source = getattr(dataset, "source", None)
        if source is not None:
            self.source = source  # named in messages about this data

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image_of = getattr(self.dataset, "image", None)
        sample, target = image_of(index) if callable(image_of) else self.dataset[index]
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, self.rank, index))
        for transform in self.transforms:
            sample = transform(sample, generator)
        return as_tensor(sample), target
