"""Progress: a rich bar on a terminal, one plain line per epoch in logs, nothing if quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext


class ProgressReporter(Callback):
    order = 30

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._epoch_started = time.perf_counter()
        self._epoch_samples = 0

    def on_loop_begin(self, ctx: LoopContext) -> None:
        self.quiet = self.quiet or not ctx.is_main
        if self.quiet or ctx.total_steps == 0:
            return
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[stage]}[/] epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]} lr {task.fields[lr]}"),
                TextColumn("{task.fields[speed]} samples/s"),
                TextColumn("{task.fields[metrics]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train",
                total=ctx.total_steps,
                completed=ctx.global_step,
                stage=ctx.stage,
                epoch=ctx.epoch,
                loss="-",
                lr="-",
                speed="-",
                metrics="",
            )
            self.progress.start()

    def on_epoch_begin(self, ctx: LoopContext) -> None:
        self._epoch_started = time.perf_counter()
        self._epoch_samples = 0

    def on_step_end(self, ctx: LoopContext) -> None:
        self._epoch_samples += ctx.batch_size
        if self.progress is None or self.task is None:
            return
        elapsed = time.perf_counter() - self._epoch_started
        self.progress.update(
            self.task,
            completed=ctx.global_step,
            epoch=ctx.epoch,
            loss=f"{ctx.loss:.4f}" if ctx.loss is not None else "-",
            lr=f"{ctx.lr:.3g}" if ctx.lr is not None else "-",
            speed=f"{self._epoch_samples / elapsed:.0f}" if elapsed else "-",
        )

    def on_epoch_end(self, ctx: LoopContext) -> None:
        if self.progress is not None and self.task is not None:
            shown = " ".join(f"{k} {v:.4f}" for k, v in ctx.metrics.items())
            self.progress.update(self.task, metrics=shown)
        if self.quiet or self.progress is not None:
            return
        elapsed = time.perf_counter() - self._epoch_started
        metrics = " ".join(f"{k}={v:.4f}" for k, v in ctx.metrics.items())
        speed = self._epoch_samples / elapsed if elapsed else 0.0
        parts = [f"[{ctx.stage}] epoch {ctx.epoch}/{ctx.num_epochs or '-'} step {ctx.global_step}"]
        if ctx.loss is not None:
            parts.append(f"loss={ctx.loss:.4f}")
        if ctx.lr is not None:
            parts.append(f"lr={ctx.lr:.3g}")
        parts.append(f"{speed:.0f} samples/s")
        if metrics:
            parts.append(metrics)
        print(
            " ".join(parts),
            file=sys.stderr,
            flush=True,
        )

    def on_loop_end(self, ctx: LoopContext) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
