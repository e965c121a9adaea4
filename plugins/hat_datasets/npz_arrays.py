"""Inputs and targets stored as arrays in a NumPy ``.npz`` file."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

# What an array of each numpy dtype kind holds, for the arrays refused.
KIND_NAMES = {
    "b": "booleans",
    "c": "complex numbers",
    "O": "Python objects",
    "U": "text",
    "S": "bytes",
    "M": "dates",
    "m": "time spans",
    "V": "structured records",
}
INT64_LIMIT = 2**63


class NpzDataset(TensorDataset):
    """A TensorDataset that knows its file: messages about its data name ``source``."""

    def __init__(self, source: str, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        super().__init__(inputs, targets)
        self.source = source


def _read(arrays: Any, file: Path, key: str) -> np.ndarray:
    try:
        array = arrays[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{file}: {key} holds Python objects (pickled), which hat does not load; "
                "save numeric arrays"
            ) from None
        raise ValueError(f"{file} is damaged: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{file} is damaged: {exc}") from None
    if array.ndim == 0:
        raise ValueError(f"{file}: {key} is a single value, not an array of samples")
    return array


def _first_sample(mask: np.ndarray) -> int:
    return int(np.argmax(mask.reshape(len(mask), -1).any(axis=1)))


def _holds(array: np.ndarray) -> str:
    return KIND_NAMES.get(array.dtype.kind, f"values of dtype {array.dtype}")


def _inputs(file: Path, key: str, array: np.ndarray, scale: float) -> torch.Tensor:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{file}: {key} holds {_holds(array)}, not numbers")
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, as one line
        values = np.ascontiguousarray(array, dtype=np.float32) * np.float32(scale)
    bad = ~np.isfinite(values)
    if bad.any():
        how = "as float32" if scale == 1 else f"as float32 times scale {scale:g}"
        raise ValueError(
            f"{file}: {key} has {int(bad.sum())} non-finite values (NaN or infinite {how}), "
            f"the first in sample {_first_sample(bad)}"
        )
    return torch.from_numpy(values)


def _targets(file: Path, key: str, array: np.ndarray) -> torch.Tensor:
    kind = array.dtype.kind
    if kind == "u" and array.size and int(array.max()) >= INT64_LIMIT:
        raise ValueError(f"{file}: {key} holds {int(array.max())}, too large for a class index")
    if kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(array) & (np.floor(array) == array) & (np.abs(array) < INT64_LIMIT)
        if not whole.all():
            where = tuple(np.argwhere(~whole)[0])
            raise ValueError(
                f"{file}: {key} holds {array[where].item()!r} (sample {where[0]}); targets "
                "are class indices, whole numbers"
            )
    elif kind not in "iu":
        raise ValueError(
            f"{file}: {key} holds {_holds(array)}; targets are class indices, integers"
        )
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))


def npz_arrays(
    path: str,
    inputs_key: str = "inputs",
    targets_key: str = "targets",
    scale: float = 1.0,
) -> NpzDataset:
    """Float32 inputs (multiplied by ``scale``) and int64 targets from ``path``.

    Inputs must be numbers, finite after scaling; targets integers, or floats that are
    whole numbers (1.0, not 2.7).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"npz file not found: {file}")
    try:
        loaded = np.load(file, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ValueError(f"{file} is not a readable .npz file") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} holds a single array (.npy), not named arrays (.npz)")
    with loaded as arrays:
        missing = [k for k in (inputs_key, targets_key) if k not in arrays.files]
        if missing:
            raise ValueError(
                f"{file} has no array {missing[0]!r}; it holds: {', '.join(arrays.files)}"
            )
        inputs, targets = _read(arrays, file, inputs_key), _read(arrays, file, targets_key)
    if len(inputs) != len(targets):
        raise ValueError(
            f"{file}: {inputs_key} has {len(inputs)} samples but {targets_key} has {len(targets)}"
        )
    x = _inputs(file, inputs_key, inputs, scale)
    y = _targets(file, targets_key, targets)
    return NpzDataset(str(file), x, y)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {"type": "string", "description": "The .npz file ('{spec_dir}' helps)."},
        "inputs_key": {"type": "string", "default": "inputs"},
        "targets_key": {"type": "string", "default": "targets"},
        "scale": {"type": "number", "default": 1.0, "description": "Inputs are multiplied by it."},
    },
}
