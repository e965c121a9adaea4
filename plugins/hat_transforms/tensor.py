"""The step from image to tensor, and normalization, on CxHxW float tensors."""

from __future__ import annotations

import torch

from hatcli.engine.transforms import Sample, Transform, as_tensor


class ToTensor(Transform):
    """An image as a float32 CxHxW tensor in [0, 1] (a tensor passes unchanged)."""

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        return as_tensor(sample)


class Normalize(Transform):
    """``(x - mean) / std`` per channel (one value for all channels, or one each); an
    image is made a tensor first."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"mean has {len(mean)} values but std {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError("std must be positive")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        tensor = as_tensor(sample)
        channels = tensor.shape[0]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values.shape[0] not in (1, channels):
                raise ValueError(
                    f"Normalize: {name} has {values.shape[0]} values for a sample of "
                    f"{channels} channels"
                )
        return (tensor - self.mean) / self.std
