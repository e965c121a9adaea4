"""Built-in model conversion steps."""

from __future__ import annotations

from typing import Any

from hat_converters import float2qat, load_checkpoint, qat2quantize
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_converters(register: Any) -> None:
    register(
        "LoadCheckpoint",
        load_checkpoint.LoadCheckpoint,
        load_checkpoint.SCHEMA,
        "Load weights from a checkpoint",
    )
    register(
        "Float2QAT",
        float2qat.Float2QAT,
        float2qat.SCHEMA,
        "fuse_model, set_qconfig, swap to QAT modules",
    )
    register(
        "QAT2Quantize",
        qat2quantize.QAT2Quantize,
        qat2quantize.SCHEMA,
        "QAT model to the integer model",
    )
