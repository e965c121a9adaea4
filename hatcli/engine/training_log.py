"""Training loss, learning rate and throughput appended to ``metrics.jsonl`` as the loop runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hatcli.engine.callback import Callback
from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.engine.context import LoopContext


class TrainingLog(Callback):
    # Before Checkpoint (10): a step's line is in the log that step's checkpoint records.
    order = 5

    def __init__(self) -> None:
        self._since = time.perf_counter()
        self._samples = 0

    def on_step_end(self, ctx: LoopContext) -> None:
        self._samples += ctx.batch_size
        if ctx.global_step % ctx.log_interval == 0:
            elapsed = time.perf_counter() - self._since
            ctx.log(
                {
                    "event": "train",
                    "loss": ctx.loss,
                    "lr": ctx.lr,
                    "samples_per_s": round(self._samples / elapsed, 1) if elapsed else None,
                }
            )
            self._since = time.perf_counter()
            self._samples = 0


def truncate_log(path: Path, offset: int | None, step: int) -> None:
    """Cut ``metrics.jsonl`` back to where a checkpoint left it, before a resumed run
    appends: its first ``offset`` bytes (what the file held when the checkpoint was
    saved), then only complete lines of records up to ``step``. A kill or a full disk
    thus never leaves a half line or a step logged twice."""
    try:
        whole = path.read_bytes()
    except FileNotFoundError:
        return
    data = whole[:offset] if offset is not None else whole
    kept: list[bytes] = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            break
        if record["step"] > step:
            break
        kept.append(line + b"\n")
    text = b"".join(kept)
    if text != whole:
        atomic_write_bytes(path, text)
