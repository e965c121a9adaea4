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

from hatcli.engine.batch_processor import BasicBatchProcessor, BatchProcessor
from hatcli.engine.callback import Callback
from hatcli.errors import RunError
from hatcli.spec import defaults
from hatcli.spec.training import trains


@dataclass
class LoopContext:
    """What the trainer and every callback see of a running stage; one object per run."""

    stage: str
    """The stage's name in the spec (``float``, ``qat``, ...)."""
    spec_name: str
    """The spec's ``name``."""
    work_dir: Path
    """Where the stage's outputs go (the spec's ``work_dir``, or ``--work-dir``)."""
    model: nn.Module
    """The model being trained, on ``device``, after the convert pipeline."""
    device: torch.device
    """Where the model and each batch are."""
    data_loaders: dict[str, DataLoader[Any]]
    """The stage's data splits by name (``train``, ``val``, ...)."""
    loss_fn: nn.Module
    """Called as ``loss_fn(outputs, targets)``."""
    batch_processor: BatchProcessor = field(default_factory=BasicBatchProcessor)
    """Turns a training batch into its loss (HAT's ``batch_processor``)."""
    optimizer: torch.optim.Optimizer | None = None
    """None in a stage without ``optimizer`` (calibration, int_infer)."""
    lr_scheduler: Any = None
    """A torch LR scheduler, or None."""
    scheduler_interval: str = "epoch"
    """Whether ``lr_scheduler`` steps after each ``epoch`` or each ``step``."""
    callbacks: list[Callback] = field(default_factory=list)
    """The spec's callbacks and hat's own, in ``order``."""
    num_epochs: int | None = None
    """Epochs to train (``num_epochs`` in the spec), or None."""
    num_steps: int | None = None
    """Batches to train (``num_steps``), or None; a stage sets one of the two or neither."""
    qat_mode: str | None = None
    """The stage's ``model_convert_pipeline.qat_mode``, recorded in checkpoints."""
    log_interval: int = defaults.LOG_INTERVAL
    amp: str = defaults.AMP
    """Mixed precision of training steps: ``off``, ``bf16`` or ``fp16`` (the stage's
    ``amp``; ``off`` for a model with fake quantization, which trains in float32)."""
    grad_scaler: Any = None
    """fp16's ``torch.amp.GradScaler`` (checkpointed), else None."""
    channels_last: bool = False
    """Model and 4-d inputs in channels-last memory format."""
    """``metrics.jsonl`` gets a training line every this many steps."""
    epoch: int = 0
    """Finished epochs."""
    global_step: int = 0
    """Finished batches over the whole stage."""
    step_in_epoch: int = 0
    """Finished batches of the current epoch (0 between epochs)."""
    batch_size: int = 0
    """Samples in the last batch (for throughput)."""
    loss: float | None = None
    """The last batch's training loss."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The latest validation results by name (``accuracy``, ``loss``, ...)."""
    metrics_step: int | None = None
    """The ``global_step`` at which ``metrics`` were computed (None: not in this run)."""
    finished: bool = False
    """True once the loop is over, before ``on_loop_end`` (saved in ``last``)."""
    world_size: int = 1
    """Processes in this run (``--nproc`` × nodes)."""
    rank: int = 0
    """This process's index; rank 0 writes files and reports."""
    forward_model: nn.Module | None = None
    """What a training step calls instead of ``model`` when set (the DDP wrapper)."""
    on_model_changed: Callable[[], None] | None = None
    """Set by a trainer that must know when a callback replaced modules of ``model``
    (DDP rebuilds its wrapper); a callback that does so calls it."""
    stop_requested: Callable[[], bool] = field(default=lambda: False)
    """Whether a signal asked the run to stop; long work inside one event (a validation)
    polls it to stop early."""

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
        return trains(self.num_epochs, self.num_steps)

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
