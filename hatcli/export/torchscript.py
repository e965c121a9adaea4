"""The TorchScript form of any stage's model: ``torch.jit.trace``, checked to give the
model's own outputs exactly."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.errors import InputError, RunError, one_line
from hatcli.export.exporter import Batch, Exporter
from hatcli.export.result import ExportResult, accuracy, agreement

QAT_HAS_NO_TORCHSCRIPT = (
    "a QAT model has no TorchScript form (its fake quantization runs Python autograd "
    "functions); trace the integer model instead (its int_infer stage, after QAT2Quantize), "
    "or export this stage with --format onnx or onnx-integer"
)


class TorchScriptExporter(Exporter):
    """``--format torchscript``: the traced model, loaded back and run on the val split."""

    suffix = "-exported.pt"

    def export(
        self,
        model: nn.Module,
        example: torch.Tensor,
        batches: list[Batch],
        result: ExportResult,
        path: Path,
    ) -> None:
        if result.kind == "qat":
            raise InputError(QAT_HAS_NO_TORCHSCRIPT)
        with warnings.catch_warnings():
            # Tracing records the model's fixed scales and shapes, which is the intent.
            # torch.jit re-exports TracerWarning, trace and load without annotations.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            try:
                traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise InputError(f"torch.jit.trace failed: {one_line(exc)}") from None
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))  # type: ignore[no-untyped-call]
        refs, outs, targets = [], [], []
        for x, y in batches:
            refs.append(model(x))
            outs.append(loaded(x))
            targets.append(y)
        ref, out, target = torch.cat(refs), torch.cat(outs), torch.cat(targets)
        if not torch.equal(ref, out):
            raise RunError(f"the traced {result.stage} model does not give the model's outputs")
        result.runner = "torch.jit.load"
        result.samples, result.accuracy = len(target), accuracy(out, target)
        result.agreements.append(
            agreement(f"hat {result.kind} model", ref, out, target, None, exact=True)
        )
        atomic_write_bytes(path, buffer.getvalue())
