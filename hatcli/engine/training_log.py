"""Training loss, learning rate and throughput appended to ``metrics.jsonl`` as the loop runs."""

from __future__ import annotations

import time

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext


class TrainingLog(Callback):
    order = 20

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
