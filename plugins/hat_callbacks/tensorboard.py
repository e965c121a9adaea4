"""TensorBoard: training loss, learning rate and samples/s, and every validation metric,
as scalars in ``{work_dir}/tensorboard/{stage}/`` through torch's ``SummaryWriter``."""

from __future__ import annotations

import time
from typing import Any

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.errors import InputError

MISSING = (
    "TensorBoard: the tensorboard package is not installed; pip install 'hat[tensorboard]' "
    "(or pip install tensorboard)"
)


def summary_writer_class() -> Any:
    """torch's ``SummaryWriter``; an ``InputError`` naming the extra when tensorboard is
    missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(MISSING) from None
    return SummaryWriter


class TensorBoard(Callback):
    """Writes ``train/loss``, ``train/lr`` and ``train/samples_per_s`` every ``interval``
    steps (the stage's ``log_interval`` by default) and ``val/NAME`` after each
    validation, at the global step; on a resume, what came after the checkpoint's step
    is dropped (``purge_step``), so the curves show one run."""

    order = 6  # after Validation (0): a validation's metrics are written in the same event

    def __init__(self, interval: int | None = None) -> None:
        self.interval = interval
        self.writer: Any = None
        self.written_metrics_step: int | None = None
        self._since = time.perf_counter()
        self._samples = 0

    def check(self, ctx: LoopContext) -> None:
        summary_writer_class()

    def on_loop_begin(self, ctx: LoopContext) -> None:
        if not ctx.is_main:
            return
        folder = ctx.work_dir / "tensorboard" / ctx.stage
        writer = summary_writer_class()
        self.writer = writer(str(folder), purge_step=ctx.global_step or None)
        self._since, self._samples = time.perf_counter(), 0

    def on_step_end(self, ctx: LoopContext) -> None:
        if self.writer is None:
            return
        self._samples += ctx.batch_size
        if ctx.global_step % (self.interval or ctx.log_interval) == 0:
            elapsed = time.perf_counter() - self._since
            step = ctx.global_step
            if ctx.loss is not None:
                self.writer.add_scalar("train/loss", ctx.loss, step)
            if ctx.lr is not None:
                self.writer.add_scalar("train/lr", ctx.lr, step)
            if elapsed > 0:
                self.writer.add_scalar("train/samples_per_s", self._samples / elapsed, step)
            self._since, self._samples = time.perf_counter(), 0
        self._write_metrics(ctx)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        self._write_metrics(ctx)

    def on_loop_end(self, ctx: LoopContext) -> None:
        self._write_metrics(ctx)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write_metrics(self, ctx: LoopContext) -> None:
        """The latest validation's metrics, once each."""
        if self.writer is None or ctx.metrics_step is None:
            return
        if ctx.metrics_step == self.written_metrics_step:
            return
        for name, value in ctx.metrics.items():
            self.writer.add_scalar(f"val/{name}", value, ctx.metrics_step)
        self.writer.flush()
        self.written_metrics_step = ctx.metrics_step

    def state_dict(self) -> dict[str, Any]:
        return {"written_metrics_step": self.written_metrics_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.written_metrics_step = state.get("written_metrics_step")


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "interval": {
            "type": "integer",
            "minimum": 1,
            "description": "Steps between training scalars (default: the stage's log_interval).",
        }
    },
}
