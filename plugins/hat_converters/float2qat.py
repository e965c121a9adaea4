"""Float2QAT: fuse, configure and swap a float model for its QAT version."""

from __future__ import annotations

from torch import nn

from hatcli.engine.convert import ConvertContext
from hatcli.errors import InputError
from hatcli.quant import QuantizationError, prepare_qat


class Float2QAT:
    """HAT's order: ``fuse_model()``, then ``set_qconfig()``, then the module swap in the
    stage's qat_mode, which the QAT model keeps."""

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        name = type(model).__name__
        for method in ("fuse_model", "set_qconfig"):
            if not callable(getattr(model, method, None)):
                raise InputError(
                    f"Float2QAT: model {name} has no {method}() method; a model that can be "
                    "quantized implements fuse_model() and set_qconfig() (see the README)"
                )
        model.fuse_model()
        model.set_qconfig()
        try:
            return prepare_qat(model, context.qat_mode, inplace=True)
        except QuantizationError as exc:
            raise InputError(f"Float2QAT: model {name}: {exc}") from None


SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}
