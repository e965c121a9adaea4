"""Images in a folder per class (``root/cat/1.png``, ``root/dog/2.jpg``), read with Pillow."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from hatcli.errors import DataError

T = TypeVar("T")
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def scan(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted sub-folders) and every image under them with its class
    index; an error when ``folder`` is missing, has no class folder or no image."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders")
    samples = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((folder / name).rglob("*"))
        if path.suffix.lower() in EXTENSIONS
    ]
    if not samples:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(EXTENSIONS))})")
    return classes, samples


def normalization(
    mean: list[float] | None, std: list[float] | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as tensors that broadcast over a CxHxW image; each list has one
    value for all channels or one per channel."""
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
    return torch.tensor(mean or [0.0]).view(-1, 1, 1), torch.tensor(std or [1.0]).view(-1, 1, 1)


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """Class index = position of the sub-folder's name in sorted order."""

    def __init__(
        self,
        root: str,
        image_size: list[int] | None = None,
        grayscale: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        folder = Path(root)
        self.classes, self.samples = scan(folder)
        self.source = str(folder)  # named in messages about this data
        self.size = tuple(image_size) if image_size else None
        self.mode = "L" if grayscale else "RGB"
        self._first_shape: tuple[int, ...] | None = None
        self.mean, self.std = normalization(mean, std, 1 if grayscale else 3)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        array = self._read(path)
        if self.size is None:
            self._check_same_size(path, array.shape)
        tensor = torch.from_numpy(array.copy())
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return (tensor - self.mean) / self.std, target

    def image(self, index: int) -> tuple[Image.Image, int]:
        """The sample as a PIL image (``grayscale`` applied, resized to ``image_size`` if
        set), for a split's ``transforms``; ``mean`` and ``std`` are not applied (list a
        ``Normalize``)."""
        path, target = self.samples[index]
        return self._open(path, lambda image: image.copy()), target

    def _read(self, path: Path) -> np.ndarray:
        """The image as HxW or HxWxC floats in [0, 1], resized to ``image_size`` if set."""
        return self._open(path, lambda image: np.asarray(image, dtype=np.float32) / 255.0)

    def _open(self, path: Path, take: Callable[[Image.Image], T]) -> T:
        """``take`` of the image at ``path``, converted to ``mode`` and resized."""
        try:
            with warnings.catch_warnings():
                # Pillow only warns between its pixel limit and twice that; refuse both.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image = image.convert(self.mode)
                    if self.size is not None and image.size != (self.size[1], self.size[0]):
                        size = (self.size[1], self.size[0])
                        image = image.resize(size, Image.Resampling.BILINEAR)
                    return take(image)
        except (
            UnidentifiedImageError,
            OSError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None

    def _check_same_size(self, path: Path, shape: tuple[int, ...]) -> None:
        """Without image_size every image must have the first one's size."""
        first = self._first_shape = self._first_shape or shape
        if shape != first:
            raise DataError(
                f"image {path} is {shape[1]}x{shape[0]} but others are "
                f"{first[1]}x{first[0]}; set image_size to resize them"
            )


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["root"],
    "properties": {
        "root": {"type": "string", "description": "Folder with one sub-folder per class."},
        "image_size": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 2,
            "maxItems": 2,
            "description": "[height, width]; images are resized to it.",
        },
        "grayscale": {"type": "boolean", "default": False},
        "mean": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
        "std": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "minItems": 1,
            "maxItems": 3,
        },
    },
}
