"""One run per work_dir and stage: an OS file lock held for the whole run.

The lock is ``fcntl.flock`` on ``{work_dir}/{stage}/.lock``. The kernel releases it
when the process ends, however it ends (SIGKILL included), so a crashed run never
leaves a lock that blocks the next one; the file itself only records who holds it,
and a run that ends removes it (and the folders it made for it, if they stayed empty).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hatcli.errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def lock_path(work_dir: Path, stage: str) -> Path:
    return work_dir / stage / LOCK_NAME


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def locked_stages(work_dir: Path, stages: list[str]) -> Iterator[None]:
    """Hold the lock of each of ``stages`` in ``work_dir`` until the block ends.

    A stage another process holds raises ``InputError`` at once, before anything of
    this run is written.
    """
    if work_dir.exists() and not work_dir.is_dir():
        raise InputError(f"work_dir {work_dir} exists and is not a folder")
    with contextlib.ExitStack() as stack:
        for stage in stages:
            stack.enter_context(_locked(work_dir, stage))
        yield


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _open_locked(path: Path, work_dir: Path, stage: str) -> int:
    """A descriptor of ``path`` with its exclusive lock held."""
    assert fcntl is not None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(
                f"{work_dir} is in use by {holder} (stage {stage}); wait for that run "
                "to end, or give this one another --work-dir"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed the file as it finished: lock the new one


@contextlib.contextmanager
def _locked(work_dir: Path, stage: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    path = lock_path(work_dir, stage)
    created = _missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    try:
        fd = _open_locked(path, work_dir, stage)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held, so a run that opened it meanwhile sees another inode
        # and locks the new file; a run that wrote nothing leaves no folder behind.
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: the run wrote something there
