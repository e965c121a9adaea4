"""Built-in export formats of ``hat export --format``."""

from __future__ import annotations

from typing import Any

from hatcli.export.onnx_integer import OnnxIntegerExporter
from hatcli.export.onnx_qdq import OnnxExporter
from hatcli.export.torchscript import TorchScriptExporter
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_exporters(register: Any) -> None:
    register(
        "onnx",
        OnnxExporter,
        help="ONNX: torch.onnx for a float stage, QDQ int8 for a QAT or integer stage",
    )
    register(
        "onnx-integer",
        OnnxIntegerExporter,
        help="ONNX integer ops (ConvInteger/MatMulInteger): the integer model bit for bit",
    )
    register("torchscript", TorchScriptExporter, help="torch.jit.trace of the stage's model")
