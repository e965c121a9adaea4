"""Built-in training loops."""

from __future__ import annotations

from typing import Any

from hat_trainers import ddp
from hat_trainers.calibrator import Calibrator
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
