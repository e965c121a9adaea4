"""Built-in training loops and batch processors."""

from __future__ import annotations

from typing import Any

from hat_trainers import ddp
from hat_trainers.calibrator import Calibrator
from hatcli.engine.batch_processor import BasicBatchProcessor, ModelReturnsLoss
from hatcli.engine.loop import Trainer
from hatcli.hookspecs import hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}


@hookimpl
def hat_register_trainers(register: Any) -> None:
    register("Trainer", Trainer, SCHEMA, "One process, one device")
    register("Calibrator", Calibrator, SCHEMA, "Observer calibration: forward passes, no grad")
    register(
        "distributed_data_parallel_trainer",
        ddp.DistributedDataParallelTrainer,
        ddp.SCHEMA,
        "torch.distributed DDP: hat train --nproc N, or torchrun",
    )


@hookimpl
def hat_register_batch_processors(register: Any) -> None:
    register("BasicBatchProcessor", BasicBatchProcessor, SCHEMA, "loss(model(x), y)")
    register(
        "ModelReturnsLoss",
        ModelReturnsLoss,
        SCHEMA,
        "model(x, y) returns its loss (or a dict of losses, summed) in training",
    )
