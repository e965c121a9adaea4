"""Checkpoint: `last`, `best` and interval checkpoints, each written atomically."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

from hatcli.engine.callback import Callback
from hatcli.engine.checkpoint_io import remove_stale_temp_files, save_checkpoint
from hatcli.engine.context import LoopContext
from hatcli.engine.state import checkpoint_state
from hatcli.errors import CheckpointError, InputError


class Checkpoint(Callback):
    """Saves ``last`` at every interval, on a signal and at the end; ``best`` when a
    validation result improves the monitored metric; with ``max_keep``, also the newest
    interval checkpoints (``{name_prefix}checkpoint-step-N.pth.tar`` or ``-epoch-N``),
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
        mode: str = "max",
        save_interval: int = 1,
        interval_by: str = "epoch",
        save_last: bool = True,
        save_best: bool = True,
        max_keep: int = 0,
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.name_prefix = name_prefix
        self.monitor = monitor_metric_key
        self.mode = mode
        self.save_interval = save_interval
        self.interval_by = interval_by
        self.save_last = save_last
        self.save_best = save_best
        self.max_keep = max_keep
        self.best: float | None = None
        self._judged_metrics_step: int | None = None

    def prefix(self, stage: str) -> str:
        return f"{stage}-" if self.name_prefix is None else self.name_prefix

    def folder(self, ctx: LoopContext) -> Path:
        return self.save_dir or ctx.work_dir

    def file_name(self, stage: str, which: str) -> str:
        return f"{self.prefix(stage)}checkpoint-{which}.pth.tar"

    def path(self, ctx: LoopContext, which: str) -> Path:
        return self.folder(ctx) / self.file_name(ctx.stage, which)

    def _interval_pattern(self, stage: str) -> re.Pattern[str]:
        return re.compile(
            re.escape(self.prefix(stage)) + r"checkpoint-(step|epoch)-(\d+)\.pth\.tar"
        )

    def _written_names(self, stage: str) -> re.Pattern[str]:
        """Every file name this callback writes in ``stage``."""
        prefix = re.escape(self.prefix(stage))
        return re.compile(prefix + r"checkpoint-(last|best|step-\d+|epoch-\d+)\.pth\.tar")

    def check(self, ctx: LoopContext) -> None:
        if self.monitor is None:
            return
        known = [n for cb in ctx.callbacks for n in getattr(cb, "metric_names", list)()]
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
            remove_stale_temp_files(self.folder(ctx), self._written_names(ctx.stage))
        self._save(ctx)  # a validation a resumed run owed may have arrived

    def on_step_end(self, ctx: LoopContext) -> None:
        due = self.interval_by == "step" and ctx.global_step % self.save_interval == 0
        self._save(ctx, interval=f"step-{ctx.global_step}" if due else None, last=due)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        finished = ctx.step_in_epoch == 0
        due = self.interval_by == "epoch" and finished and ctx.epoch % self.save_interval == 0
        self._save(ctx, interval=f"epoch-{ctx.epoch}" if due else None, last=due)

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
        if last and self.save_last:
            save_checkpoint(state, self.path(ctx, "last"))
        if best:
            save_checkpoint(state, self.path(ctx, "best"))
        if keep_interval:
            assert interval is not None
            save_checkpoint(state, self.path(ctx, interval))
            self._prune(ctx)

    def interval_files(self, folder: Path, stage: str) -> list[Path]:
        """Interval checkpoints in ``folder``, newest (highest step or epoch) first."""
        pattern = self._interval_pattern(stage)
        found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def _prune(self, ctx: LoopContext) -> None:
        for old in self.interval_files(self.folder(ctx), ctx.stage)[self.max_keep :]:
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
        "mode": {"enum": ["max", "min"], "default": "max"},
        "save_interval": {"type": "integer", "minimum": 1, "default": 1},
        "interval_by": {"enum": ["epoch", "step"], "default": "epoch"},
        "save_last": {"type": "boolean", "default": True},
        "save_best": {"type": "boolean", "default": True},
        "max_keep": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Also keep this many newest interval checkpoints (step-N / epoch-N).",
        },
    },
}
