"""Built-in callbacks and metrics."""

from __future__ import annotations

from typing import Any

from hat_callbacks.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from hat_callbacks.checkpoint import Checkpoint
from hat_callbacks.validation import SCHEMA as VALIDATION_SCHEMA
from hat_callbacks.validation import build_validation
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
    register("Validation", build_validation, VALIDATION_SCHEMA, "Evaluate on a data split")
    register("Checkpoint", Checkpoint, CHECKPOINT_SCHEMA, "Save last and best checkpoints")


@hookimpl
def hat_register_metrics(register: Any) -> None:
    register("TopKAccuracy", TopKAccuracy, TOPK_SCHEMA, "Target among the k highest outputs")
