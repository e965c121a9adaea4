"""Checkpoint: `last`, `best` and interval checkpoints, each written atomically."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from hatcli.engine.callback import Callback
from hatcli.engine.checkpoint_files import CheckpointFiles
from hatcli.engine.checkpoint_io import remove_stale_temp_files, save_checkpoint
from hatcli.engine.context import LoopContext
from hatcli.engine.state import checkpoint_state
from hatcli.errors import CheckpointError, InputError


class Checkpoint(Callback):
    """Saves ``last`` at every interval, on a signal and at the end; ``best`` when a
    validation result improves the monitored metric; with ``max_keep``, also the newest
    interval checkpoints (``{name_prefix}checkpoint-step-%04d.pth.tar`` or ``-epoch-%04d``,
    as HAT names them),
    which ``hat resume`` falls back to if ``last`` is damaged.

    ``name_prefix`` defaults to ``"{stage}-"`` (HAT's configs write exactly that), so
    the stages of one spec never overwrite each other's files.

    HAT's ``strict_match`` is not an option: HAT uses it when loading the trained
    weights into a separate deploy model to trace; here ``SaveTraced`` traces the
    trained model itself, and ``LoadCheckpoint(strict=...)`` is how strict loading is set.
    """

    order = 10

    def __init__(
        self,
        save_dir: str | None = None,
        name_prefix: str | None = None,
        monitor_metric_key: str | None = None,
        mode: str | None = None,
        save_interval: int = 1,
        interval_by: str = "epoch",
        save_last: bool = True,
        save_best: bool = True,
        max_keep: int = 0,
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.name_prefix = name_prefix
        self.monitor = monitor_metric_key
        self.mode = mode or "max"
        # HAT's Checkpoint with a mode and no key monitors the stage's validation metric.
        self._monitor_the_metric = mode is not None and monitor_metric_key is None
        self.save_interval = save_interval
        self.interval_by = interval_by
        self.save_last = save_last
        self.save_best = save_best
        self.max_keep = max_keep
        self.best: float | None = None
        self._judged_metrics_step: int | None = None

    def prefix(self, stage: str) -> str:
        return f"{stage}-" if self.name_prefix is None else self.name_prefix

    def checkpoint_files(self, stage: str, work_dir: Path) -> CheckpointFiles:
        return CheckpointFiles(
            self.save_dir or work_dir, self.prefix(stage), self.save_last, self.save_best
        )

    def files(self, ctx: LoopContext) -> CheckpointFiles:
        return self.checkpoint_files(ctx.stage, ctx.work_dir)

    def check(self, ctx: LoopContext) -> None:
        known = [name for cb in ctx.callbacks for name in cb.metric_names()]
        if self._monitor_the_metric and known:
            # The first metric validation computes (accuracy); with none, as in HAT,
            # best is the latest state saved.
            self.monitor = known[0]
        if self.monitor is None:
            return
        if not known:
            raise InputError(
                f"Checkpoint: monitor_metric_key {self.monitor!r} needs a Validation callback"
            )
        if self.monitor not in known:
            close = difflib.get_close_matches(self.monitor, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise InputError(f"Checkpoint: no metric {self.monitor!r}{hint}")

    def on_loop_begin(self, ctx: LoopContext) -> None:
        if ctx.is_main:
            files = self.files(ctx)
            remove_stale_temp_files(files.folder, files.names)
        self._save(ctx)  # a validation a resumed run owed may have arrived

    def on_step_end(self, ctx: LoopContext) -> None:
        due = self.interval_by == "step" and ctx.global_step % self.save_interval == 0
        self._save(ctx, interval=f"step-{ctx.global_step:04d}" if due else None, last=due)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        finished = ctx.step_in_epoch == 0
        due = self.interval_by == "epoch" and finished and ctx.epoch % self.save_interval == 0
        self._save(ctx, interval=f"epoch-{ctx.epoch:04d}" if due else None, last=due)

    def on_interrupt(self, ctx: LoopContext) -> None:
        self._save(ctx, last=True)

    def on_loop_end(self, ctx: LoopContext) -> None:
        self._save(ctx, last=True)  # also marks the stage finished in 'last'

    def _judge_new_result(self, ctx: LoopContext) -> bool:
        """Compare a validation result that arrived since the last event; whether it is
        the best so far. Each result is judged once, whenever it arrives."""
        if ctx.metrics_step is None or ctx.metrics_step == self._judged_metrics_step:
            return False
        self._judged_metrics_step = ctx.metrics_step
        if self.monitor is None or self.monitor not in ctx.metrics:
            return False
        value = ctx.metrics[self.monitor]
        if not math.isfinite(value):
            return False
        if self.best is not None and not (
            value > self.best if self.mode == "max" else value < self.best
        ):
            return False
        self.best = value
        return True

    def _save(self, ctx: LoopContext, interval: str | None = None, last: bool = False) -> None:
        improved = self._judge_new_result(ctx)
        # Without a monitored metric, 'best' is the latest state saved.
        best = self.save_best and (improved or (self.monitor is None and last))
        keep_interval = interval is not None and self.max_keep > 0
        if not ctx.is_main or not (best or keep_interval or (last and self.save_last)):
            return
        state = checkpoint_state(ctx)
        state["best"] = {"metric": self.monitor, "mode": self.mode, "value": self.best}
        files = self.files(ctx)
        if last and self.save_last:
            save_checkpoint(state, files.last)
        if best:
            save_checkpoint(state, files.best)
        if keep_interval:
            assert interval is not None
            save_checkpoint(state, files.path(interval))
            for old in files.intervals()[self.max_keep :]:
                old.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        if best is not None and (isinstance(best, bool) or not isinstance(best, int | float)):
            raise CheckpointError(f"the Checkpoint callback's best value {best!r} is not a number")
        self.best = best


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "save_dir": {"type": "string", "description": "Defaults to work_dir."},
        "name_prefix": {
            "type": "string",
            "default": "{stage}-",
            "description": "Start of each file name: 'float-checkpoint-best.pth.tar' by default.",
        },
        "monitor_metric_key": {
            "type": "string",
            "description": "Validation metric that decides 'best' (e.g. accuracy); "
            "without it, best is the latest.",
        },
        "mode": {
            "enum": ["max", "min"],
            "description": "Whether a higher or lower monitored metric is better (default "
            "max); given without monitor_metric_key, the stage's validation metric is "
            "monitored, as in HAT.",
        },
        "save_interval": {"type": "integer", "minimum": 1, "default": 1},
        "interval_by": {"enum": ["epoch", "step"], "default": "epoch"},
        "save_last": {"type": "boolean", "default": True},
        "save_best": {"type": "boolean", "default": True},
        "max_keep": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Also keep this many newest interval checkpoints (step-%04d / "
            "epoch-%04d).",
        },
    },
}
