"""Writing files so a crash never leaves a half-written one, and loading checkpoints safely."""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from hatcli.errors import CheckpointError, RunError

# mkstemp adds 8 characters from this alphabet; no other program names files this way.
TEMP_SUFFIX = ".hat-tmp"
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temp file in the same folder, fsync, rename, fsync the folder.

    A failure (a full disk, a read-only folder) leaves ``path`` as it was and raises a
    ``RunError`` that names it.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent
        )
    except OSError as exc:
        raise RunError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunError(
                f"cannot write {target}: {exc.strerror or exc}; the file that was there is intact"
            ) from None
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: str | Path, targets: re.Pattern[str]) -> None:
    """Temp files left by a hat process killed while writing a file whose name
    ``targets`` fully matches, in ``folder`` (the targets themselves are intact).
    Nothing else is touched."""
    directory = Path(folder)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or targets.fullmatch(match.group("target")) is None:
            continue
        if entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


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
    except Exception:  # zipfile raises many kinds (NotImplementedError for a bad method field)
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
    problem = _field_problem(state)
    if problem is not None:
        raise CheckpointError(f"{file}: damaged or crafted checkpoint: {problem}")
    return state


def _is_count(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _field_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the fields hat reads from a checkpoint, or ``None``."""
    for key in ("epoch", "global_step", "step_in_epoch", "log_offset"):
        if key in state and not _is_count(state[key]):
            return f"{key!r} is {state[key]!r}, not a count"
    if "finished" in state and not isinstance(state["finished"], bool):
        return f"'finished' is {state['finished']!r}, not true or false"
    for key in ("optimizer", "lr_scheduler"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"{key!r} is not a mapping"
    for key in ("callbacks", "rng", "metrics"):
        if key in state and not isinstance(state[key], dict):
            return f"{key!r} is not a mapping"
    metrics = state.get("metrics", {})
    if not all(isinstance(k, str) and isinstance(v, int | float) for k, v in metrics.items()):
        return "'metrics' is not a mapping of names to numbers"
    absorbed = state.get("absorbed_bn", [])
    if not isinstance(absorbed, list) or not all(isinstance(n, str) for n in absorbed):
        return "'absorbed_bn' is not a list of names"
    meta = state.get("meta", {})
    if not isinstance(meta, dict):
        return "'meta' is not a mapping"
    for key in ("stage", "qat_mode", "spec_name", "optimizer_class"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"meta {key!r} is {meta[key]!r}, not a name"
    if "world_size" in meta and not _is_count(meta["world_size"], 1):
        return f"meta 'world_size' is {meta['world_size']!r}, not a number of processes"
    return None
