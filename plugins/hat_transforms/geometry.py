"""Resizing, cropping and flipping, done by Pillow (``Image.resize``, ``Image.crop``,
``Image.transpose``) on images; crops and flips also on CxHxW tensors."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

from hatcli.engine.transforms import Sample, Transform, as_image

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def pair(size: int | list[int]) -> tuple[int, int]:
    """``(height, width)`` from one number or a ``[height, width]`` list."""
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size needs one number or [height, width], got {size}")
    return int(size[0]), int(size[1])


def dimensions(sample: Sample) -> tuple[int, int]:
    """``(height, width)`` of an image or a CxHxW tensor."""
    if isinstance(sample, Image.Image):
        return sample.height, sample.width
    return int(sample.shape[-2]), int(sample.shape[-1])


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """The ``height`` x ``width`` window at ``(top, left)``; outside the sample is 0."""
    if isinstance(sample, Image.Image):
        return sample.crop((left, top, left + width, top + height))
    h, w = dimensions(sample)
    pads = (max(0, -left), max(0, left + width - w), max(0, -top), max(0, top + height - h))
    if any(pads):
        sample = functional.pad(sample, pads)
        top, left = top + pads[2], left + pads[0]
    return sample[..., top : top + height, left : left + width]


def pad(sample: Sample, padding: int, mode: str, fill: int) -> Sample:
    """``padding`` pixels on every side: ``constant`` (``fill``), ``edge`` or ``reflect``."""
    if padding == 0:
        return sample
    if isinstance(sample, Image.Image):
        array = np.asarray(sample)
        widths = [(padding, padding), (padding, padding)] + [(0, 0)] * (array.ndim - 2)
        if mode == "constant":
            padded = np.pad(array, widths, mode="constant", constant_values=fill)
        else:
            padded = np.pad(array, widths, mode=mode)
        return Image.fromarray(padded, mode=sample.mode)
    torch_mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[mode]
    value = fill / 255.0 if mode == "constant" else None
    batched = sample.unsqueeze(0)
    return functional.pad(batched, (padding,) * 4, mode=torch_mode, value=value).squeeze(0)


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]``, both included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class Resize(Transform):
    """To ``size``: ``[height, width]``, or one number for the shorter side (the aspect
    ratio kept), as torchvision's ``Resize``."""

    def __init__(self, size: int | list[int], interpolation: str = "bilinear") -> None:
        self.size = size
        self.resample = INTERPOLATION[interpolation]

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        image = as_image(sample, "Resize")
        if isinstance(self.size, int):
            short, long = sorted((image.width, image.height))
            other = int(self.size * long / short)
            size = (self.size, other) if image.width <= image.height else (other, self.size)
        else:
            size = (self.size[1], self.size[0])
        return image if image.size == size else image.resize(size, self.resample)


class CenterCrop(Transform):
    """The central ``size`` window (padded with 0 where the sample is smaller)."""

    def __init__(self, size: int | list[int]) -> None:
        self.height, self.width = pair(size)

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        h, w = dimensions(sample)
        top = round((h - self.height) / 2)
        left = round((w - self.width) / 2)
        return crop(sample, top, left, self.height, self.width)


class RandomCrop(Transform):
    """A ``size`` window at a random place, after ``padding`` on every side (CIFAR's
    ``RandomCrop(32, padding=4)``)."""

    def __init__(
        self,
        size: int | list[int],
        padding: int = 0,
        padding_mode: str = "constant",
        fill: int = 0,
    ) -> None:
        self.height, self.width = pair(size)
        self.padding, self.padding_mode, self.fill = padding, padding_mode, fill

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        sample = pad(sample, self.padding, self.padding_mode, self.fill)
        h, w = dimensions(sample)
        if h < self.height or w < self.width:
            raise ValueError(
                f"RandomCrop: the sample is {h}x{w} after padding, smaller than the crop "
                f"{self.height}x{self.width}"
            )
        top = randint(generator, 0, h - self.height)
        left = randint(generator, 0, w - self.width)
        return crop(sample, top, left, self.height, self.width)


class RandomResizedCrop(Transform):
    """A random window of ``scale`` of the area and ``ratio`` of aspect, resized to
    ``size`` (torchvision's algorithm: ten tries, then the central crop)."""

    def __init__(
        self,
        size: int | list[int],
        scale: list[float] | None = None,
        ratio: list[float] | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.height, self.width = pair(size)
        self.scale = scale or [0.08, 1.0]
        self.ratio = ratio or [3 / 4, 4 / 3]
        if self.scale[0] > self.scale[1] or self.ratio[0] > self.ratio[1]:
            raise ValueError("scale and ratio are [low, high] with low <= high")
        self.resample = INTERPOLATION[interpolation]

    def window(self, height: int, width: int, generator: torch.Generator) -> tuple[int, ...]:
        """``(top, left, height, width)`` of the crop in a ``height`` x ``width`` image."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * uniform(generator, self.scale[0], self.scale[1])
            aspect = math.exp(uniform(generator, *log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return randint(generator, 0, height - h), randint(generator, 0, width - w), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        image = as_image(sample, "RandomResizedCrop")
        top, left, h, w = self.window(image.height, image.width, generator)
        box = (left, top, left + w, top + h)
        return image.resize((self.width, self.height), self.resample, box=box)


class RandomHorizontalFlip(Transform):
    """Mirrored left to right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        if float(torch.rand(1, generator=generator)) >= self.p:
            return sample
        if isinstance(sample, Image.Image):
            return sample.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return sample.flip(-1)
