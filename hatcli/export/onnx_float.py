"""The ONNX form of a float model: ``torch.onnx.export`` (TorchScript-based), opset 17,
a dynamic batch dimension."""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from hatcli.errors import InputError, one_line
from hatcli.export.onnx_common import require_onnx
from hatcli.export.onnx_graph import OPSET


def torch_onnx_export(model: nn.Module, example: torch.Tensor) -> Any:
    """The ONNX model of a float ``model`` traced on ``example``."""
    onnx, _ = require_onnx()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works (dynamo=False)
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        except Exception as exc:
            raise InputError(f"torch.onnx.export failed: {one_line(exc)}") from None
    return onnx.load_from_string(buffer.getvalue())
