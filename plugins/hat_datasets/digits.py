"""scikit-learn's 8x8 handwritten digits, shipped with hat so the example needs no download."""

from __future__ import annotations

import importlib.resources
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    with importlib.resources.files("hat_datasets").joinpath("data/digits.npz").open("rb") as f:
        arrays = np.load(f)
        return arrays["images"], arrays["targets"]


def digits(split: Literal["train", "val", "all"] = "train") -> TensorDataset:
    """1x8x8 float images in [0, 1] and int64 labels; a fixed 80/20 train/val split."""
    images, targets = _load_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_val = round(len(images) * VAL_FRACTION)
    index = {"val": order[:n_val], "train": order[n_val:], "all": np.arange(len(images))}[split]
    x = torch.from_numpy(images[index].astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(targets[index].astype(np.int64))
    return TensorDataset(x, y)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"split": {"enum": ["train", "val", "all"], "default": "train"}},
}
