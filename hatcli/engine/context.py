"""What callbacks see: the model, its optimizer, the loop's position and the latest metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hatcli.engine.callback import Callback
from hatcli.errors import RunError


@dataclass
class LoopContext:
    stage: str
    spec_name: str
    spec_path: Path
    work_dir: Path
    model: nn.Module
    device: torch.device
    data_loaders: dict[str, DataLoader[Any]]
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any = None
    scheduler_interval: str = "epoch"
    callbacks: list[Callback] = field(default_factory=list)
    num_epochs: int | None = None
    num_steps: int | None = None
    qat_mode: str | None = None
    log_interval: int = 10
    epoch: int = 0
    global_step: int = 0
    step_in_epoch: int = 0
    batch_size: int = 0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_step: int | None = None
    finished: bool = False
    world_size: int = 1
    rank: int = 0
    forward_model: nn.Module | None = None
    on_model_changed: Callable[[], None] | None = None
    stop_requested: Callable[[], bool] = field(default=lambda: False)

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress."""
        return self.rank == 0

    @property
    def stage_dir(self) -> Path:
        return self.work_dir / self.stage

    @property
    def log_path(self) -> Path:
        return self.stage_dir / "metrics.jsonl"

    @property
    def trains(self) -> bool:
        """Whether the stage runs batches through the loop (epochs or steps to do)."""
        return bool(self.num_epochs) or bool(self.num_steps)

    @property
    def steps_per_epoch(self) -> int:
        loader = self.data_loaders.get("train")
        return len(loader) if loader is not None else 0

    @property
    def total_steps(self) -> int:
        if self.num_steps:
            return self.num_steps
        return (self.num_epochs or 0) * self.steps_per_epoch

    @property
    def lr(self) -> float | None:
        if self.optimizer is None:
            return None
        return float(self.optimizer.param_groups[0]["lr"])

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to ``{work_dir}/{stage}/metrics.jsonl`` (main process only)."""
        if not self.is_main:
            return
        line = {"stage": self.stage, "epoch": self.epoch, "step": self.global_step, **record}
        try:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as exc:
            raise RunError(f"cannot write {self.log_path}: {exc.strerror or exc}") from None
