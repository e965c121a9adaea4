"""CIFAR-10 from its binary distribution (``cifar-10-binary.tar.gz``): records of one
label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row by row)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SIDE = 32
PIXELS = 3 * SIDE * SIDE
RECORD = 1 + PIXELS
FILES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BINARY_FOLDER = "cifar-10-batches-bin"
PICKLE_FOLDER = "cifar-10-batches-py"
DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def data_folder(root: Path) -> Path:
    """The folder holding the ``.bin`` files: ``root`` or its ``cifar-10-batches-bin``;
    the pickle distribution is refused, saying which one to download."""
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {root}")
    for folder in (root, root / BINARY_FOLDER):
        if (folder / "test_batch.bin").is_file() or (folder / "data_batch_1.bin").is_file():
            return folder
    for folder in (root, root / PICKLE_FOLDER):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            raise ValueError(
                f"{folder} holds the Python (pickle) distribution of CIFAR-10, which hat "
                f"does not load (a pickle can run code); download the binary one, {DOWNLOAD}"
            )
    raise FileNotFoundError(
        f"{root} holds no CIFAR-10 binary files (data_batch_1.bin ... test_batch.bin); "
        f"download {DOWNLOAD} and unpack it there"
    )


def read_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images N x 3 x 32 x 32 uint8, labels N int64)`` of one ``.bin`` file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file missing: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD:
        raise ValueError(
            f"{path} is {data.size} bytes, not a whole number of {RECORD}-byte records "
            "(damaged, or not a CIFAR-10 binary file)"
        )
    records = data.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        first = int(np.argmax(labels >= len(CLASSES)))
        raise ValueError(
            f"{path}: record {first} has label {labels[first]}, but CIFAR-10 has 10 classes "
            "(is it CIFAR-100's binary format?)"
        )
    return records[:, 1:].reshape(-1, 3, SIDE, SIDE), labels


class Cifar10(Dataset[tuple[torch.Tensor, int]]):
    """3x32x32 float images in [0, 1] and their class (``CLASSES``); with a split's
    ``transforms``, the transforms get each image as a PIL image (``image``)."""

    classes = CLASSES

    def __init__(self, root: str, split: Literal["train", "test"] = "train") -> None:
        folder = data_folder(Path(root))
        self.source = str(folder)  # named in messages about this data
        parts = [read_records(folder / name) for name in FILES[split]]
        self.images = np.concatenate([images for images, _ in parts])
        self.labels = np.concatenate([labels for _, labels in parts])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index].astype(np.float32) / 255.0)
        return image, int(self.labels[index])

    def image(self, index: int) -> tuple[Image.Image, int]:
        """The sample as an RGB PIL image, for image transforms."""
        pixels = np.ascontiguousarray(self.images[index].transpose(1, 2, 0))
        return Image.fromarray(pixels, "RGB"), int(self.labels[index])


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["root"],
    "properties": {
        "root": {
            "type": "string",
            "description": "The unpacked binary files (cifar-10-batches-bin, or its parent).",
        },
        "split": {"enum": ["train", "test"], "default": "train"},
    },
}
