"""QAT2Quantize: turn a QAT model into the integer model (which can only be evaluated)."""

from __future__ import annotations

from torch import nn

from hatcli.engine.convert import ConvertContext
from hatcli.errors import InputError
from hatcli.quant import QuantizationError, convert


class QAT2Quantize:
    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        try:
            return convert(model, inplace=True)
        except QuantizationError as exc:
            raise InputError(f"QAT2Quantize: model {type(model).__name__}: {exc}") from None


SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}
