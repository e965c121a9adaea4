"""Inputs and targets stored as arrays in a NumPy ``.npz`` file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset


def npz_arrays(
    path: str,
    inputs_key: str = "inputs",
    targets_key: str = "targets",
    scale: float = 1.0,
) -> TensorDataset:
    """Float32 inputs (multiplied by ``scale``) and int64 targets from ``path``."""
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
        try:
            inputs, targets = arrays[inputs_key], arrays[targets_key]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{file} is damaged: {exc}") from None
    if len(inputs) != len(targets):
        raise ValueError(
            f"{file}: {inputs_key} has {len(inputs)} samples but {targets_key} has {len(targets)}"
        )
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32) * np.float32(scale))
    y = torch.from_numpy(np.ascontiguousarray(targets).astype(np.int64))
    return TensorDataset(x, y)


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
