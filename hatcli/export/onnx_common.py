"""What every ONNX format shares: importing onnx and onnxruntime, the integer form of a
QAT model, and checking a built graph (``onnx.checker``, then ONNX Runtime on the val
split against the hat model) before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.errors import InputError, RunError, one_line
from hatcli.export.exporter import Batch
from hatcli.export.result import ExportResult, OutputScale, accuracy, agreement
from hatcli.quant import convert

ONNX_HINT = "ONNX export needs onnx and onnxruntime: install hat[onnx] (pip install 'hat[onnx]')"
RUNNER = "onnxruntime"


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or an InputError telling how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise InputError(ONNX_HINT) from None
    return onnx, onnxruntime


def integer_form(model: nn.Module, result: ExportResult) -> nn.Module:
    """The integer model an ONNX graph of a quantized stage is built from: the model
    itself, or for a QAT stage its ``convert``."""
    if result.kind != "qat":
        return model
    try:
        return convert(model)
    except Exception as exc:
        raise InputError(f"the QAT model does not convert: {one_line(exc)}") from None


def check_and_write(
    proto: Any,
    model: nn.Module,
    integer: nn.Module,
    batches: list[Batch],
    result: ExportResult,
    path: Path,
    out_scale: OutputScale | None = None,
    exact: bool = False,
) -> None:
    """Validate ``proto``, run it on ``batches`` and compare with ``model`` (and with
    ``integer``, the integer form a QAT ``model`` was exported as), then write it.

    ``out_scale`` is the scale the graph's output was dequantized from; ``exact``: the
    graph computes the integer model's own integers, so count equal elements."""
    onnx, ort = require_onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise RunError(f"onnx.checker rejects the exported graph: {one_line(exc)}") from None
    data = proto.SerializeToString()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RunError(f"onnxruntime cannot load the exported graph: {one_line(exc)}") from None
    name = session.get_inputs()[0].name
    refs, ints, outs, targets = [], [], [], []
    for x, y in batches:
        refs.append(model(x))
        if integer is not model:
            ints.append(integer(x))
        outs.append(torch.from_numpy(session.run(None, {name: x.numpy()})[0]))
        targets.append(y)
    out, target = torch.cat(outs), torch.cat(targets)
    result.runner = RUNNER
    result.samples, result.accuracy = len(target), accuracy(out, target)
    if ints:  # a QAT stage: the graph is its integer model; compare with both
        result.agreements.append(
            agreement(
                "hat integer model (QAT2Quantize of it)",
                torch.cat(ints),
                out,
                target,
                out_scale,
                exact,
            )
        )
    against = "hat QAT model" if ints else f"hat {result.kind} model"
    result.agreements.append(agreement(against, torch.cat(refs), out, target, out_scale, exact))
    atomic_write_bytes(path, data)
