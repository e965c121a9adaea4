"""Built-in model conversion steps."""

from __future__ import annotations

from typing import Any

from hat_converters.load_checkpoint import SCHEMA as LOAD_CHECKPOINT_SCHEMA
from hat_converters.load_checkpoint import LoadCheckpoint
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_converters(register: Any) -> None:
    register(
        "LoadCheckpoint", LoadCheckpoint, LOAD_CHECKPOINT_SCHEMA, "Load weights from a checkpoint"
    )
