"""Built-in callbacks and metrics."""

from __future__ import annotations

from typing import Any

from hat_callbacks import checkpoint, fuse_bn, save_traced, tensorboard, validation
from hatcli.engine.metric import TopKAccuracy
from hatcli.hookspecs import hookimpl

TOPK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "k": {"type": "integer", "minimum": 1, "default": 1},
        "name": {"type": "string", "description": "Key in the results (default topK_accuracy)."},
    },
}


@hookimpl
def hat_register_callbacks(register: Any) -> None:
    register(
        "Validation", validation.build_validation, validation.SCHEMA, "Evaluate on a data split"
    )
    register(
        "Checkpoint", checkpoint.Checkpoint, checkpoint.SCHEMA, "Save last and best checkpoints"
    )
    register("FuseBN", fuse_bn.FuseBN, fuse_bn.SCHEMA, "Absorb BN of sub-modules mid-QAT")
    register("SaveTraced", save_traced.SaveTraced, save_traced.SCHEMA, "Save a TorchScript trace")
    register(
        "TensorBoard",
        tensorboard.TensorBoard,
        tensorboard.SCHEMA,
        "Loss, LR, samples/s and validation metrics for TensorBoard",
    )


@hookimpl
def hat_register_metrics(register: Any) -> None:
    register("TopKAccuracy", TopKAccuracy, TOPK_SCHEMA, "Target among the k highest outputs")
