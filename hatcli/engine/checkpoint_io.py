"""Writing files so a crash never leaves a half-written one, and loading checkpoints safely."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from hatcli.errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temp file in the same folder, fsync, rename, fsync the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: str | Path) -> None:
    """Temp files left by a process killed mid-write (their targets are intact)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


ZIP_MAGIC = b"PK\x03\x04"


def verify_integrity(file: Path) -> None:
    """Check the CRC-32 that a checkpoint's zip container keeps for every record.

    ``torch.load`` does not check them, so a flipped bit in tensor data would load
    silently; a truncated file has no central directory and fails here too. Files in
    torch's legacy (non-zip) format are left to ``torch.load``.
    """
    with file.open("rb") as f:
        if f.read(4) != ZIP_MAGIC:
            return
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise CheckpointError(f"{file}: corrupt or truncated checkpoint") from None
    if damaged is not None:
        raise CheckpointError(f"{file}: corrupt checkpoint (checksum mismatch in {damaged})")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every failure is a ``CheckpointError``."""
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"{file}: checkpoint not found")
    if not file.is_file():
        raise CheckpointError(f"{file}: not a file")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{file}: checkpoint is empty")
    verify_integrity(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{file}: refused: the file holds objects other than tensors and plain data "
                "(a pickle that could run code); it was not loaded"
            ) from None
        raise CheckpointError(f"{file}: not a readable checkpoint (not a torch file)") from None
    except Exception:  # torch raises many kinds for bytes it cannot parse
        raise CheckpointError(f"{file}: not a readable checkpoint (not a torch file)") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{file}: not a hat checkpoint (no 'state_dict')")
    weights = state["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{file}: 'state_dict' is not a mapping of names to tensors")
    if not isinstance(state.get("meta", {}), dict):
        raise CheckpointError(f"{file}: 'meta' is not a mapping")
    return state
