"""Colour augmentation by Pillow's ``ImageEnhance`` (brightness, contrast, saturation)
and its HSV conversion (hue), as torchvision does on PIL images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance

from hat_transforms.geometry import uniform
from hatcli.engine.transforms import Sample, Transform, as_image


def factor_range(name: str, value: float | list[float], centre: float) -> tuple[float, float]:
    """``[centre - v, centre + v]`` (at least 0) for one number, or ``[low, high]``."""
    if isinstance(value, list):
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"{name} needs one number or [low, high] with low <= high")
        return float(value[0]), float(value[1])
    return max(0.0, centre - value), centre + value


def shift_hue(image: Image.Image, amount: float) -> Image.Image:
    """The hue turned by ``amount`` of a full turn (-0.5 to 0.5)."""
    if image.mode in ("L", "1", "I", "F"):
        return image
    h, s, v = image.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        hue = hue + np.uint8(round(amount * 255) % 256)
    shifted = Image.merge("HSV", (Image.fromarray(hue, "L"), s, v))
    return shifted.convert(image.mode)


class ColorJitter(Transform):
    """Brightness, contrast and saturation scaled by a random factor of each range, and
    the hue turned by up to ``hue``, in a random order (torchvision's ``ColorJitter``)."""

    def __init__(
        self,
        brightness: float | list[float] = 0.0,
        contrast: float | list[float] = 0.0,
        saturation: float | list[float] = 0.0,
        hue: float | list[float] = 0.0,
    ) -> None:
        self.ranges = {
            "brightness": factor_range("brightness", brightness, 1.0),
            "contrast": factor_range("contrast", contrast, 1.0),
            "saturation": factor_range("saturation", saturation, 1.0),
        }
        self.hue = factor_range("hue", hue, 0.0) if isinstance(hue, list) else (-hue, hue)
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError("hue must lie within [-0.5, 0.5]")

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        image = as_image(sample, "ColorJitter")
        enhancers = {
            "brightness": ImageEnhance.Brightness,
            "contrast": ImageEnhance.Contrast,
            "saturation": ImageEnhance.Color,
        }
        names = ["brightness", "contrast", "saturation", "hue"]
        for position in torch.randperm(4, generator=generator).tolist():
            name = names[position]
            if name == "hue":
                if self.hue != (0.0, 0.0):
                    image = shift_hue(image, uniform(generator, *self.hue))
                continue
            low, high = self.ranges[name]
            if (low, high) != (1.0, 1.0):
                image = enhancers[name](image).enhance(uniform(generator, low, high))
        return image
