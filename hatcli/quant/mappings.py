"""The swap tables: float type -> QAT type (``prepare_qat``), QAT type -> integer module
(``convert``, and the integer twins QAT eval runs).

A module type is supported by adding its entries here; exact types, so a subclass needs
its own entries.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import hatcli.nn as float_nn
from hatcli.quant import functional, stubs
from hatcli.quant.nn import qat, quantized

FLOAT_TO_QAT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: qat.Conv2d,
    nn.Linear: qat.Linear,
    nn.ReLU: qat.ReLU,
    nn.ReLU6: qat.ReLU6,
    nn.AdaptiveAvgPool2d: qat.AdaptiveAvgPool2d,
    float_nn.ConvBN2d: qat.ConvBN2d,
    float_nn.ConvBNReLU2d: qat.ConvBNReLU2d,
    float_nn.ConvBNReLU62d: qat.ConvBNReLU62d,
    float_nn.ConvBNAdd2d: qat.ConvBNAdd2d,
    float_nn.ConvBNAddReLU2d: qat.ConvBNAddReLU2d,
    float_nn.LinearReLU: qat.LinearReLU,
    stubs.QuantStub: qat.QuantStub,
    stubs.DeQuantStub: qat.DeQuantStub,
    functional.QFunctional: qat.QFunctional,
    nn.MaxPool2d: qat.MaxPool2d,
    nn.AvgPool2d: qat.AvgPool2d,
    nn.Dropout: qat.Dropout,
    nn.Upsample: qat.Interpolate,
    nn.UpsamplingNearest2d: qat.Interpolate,
    nn.UpsamplingBilinear2d: qat.Interpolate,
    nn.ConvTranspose2d: qat.ConvTranspose2d,
    **{
        act: qat.Elementwise
        for act in (
            nn.Sigmoid,
            nn.Hardsigmoid,
            nn.SiLU,
            nn.Hardswish,
            nn.GELU,
            nn.Tanh,
            nn.LeakyReLU,
            nn.Hardtanh,
            nn.ELU,
            nn.Mish,
            nn.Softplus,
        )
    },
}
"""Float type -> QAT type (built by its ``from_float``)."""

# A factory takes exactly its key's type, which a dict's value type cannot say: ``...``.
QAT_TO_INTEGER: dict[type[nn.Module], Callable[..., nn.Module]] = {
    qat.Conv2d: quantized.Conv2d.from_qat,
    qat.ConvBN2d: quantized.Conv2d.from_qat,
    qat.ConvBNReLU2d: quantized.Conv2d.from_qat,
    qat.ConvBNReLU62d: quantized.Conv2d.from_qat,
    qat.ConvBNAdd2d: quantized.ConvAdd2d.from_qat,
    qat.ConvBNAddReLU2d: quantized.ConvAdd2d.from_qat,
    qat.Linear: quantized.Linear.from_qat,
    qat.LinearReLU: quantized.Linear.from_qat,
    qat.ReLU: quantized.ReLU.from_qat,
    qat.ReLU6: quantized.ReLU6.from_qat,
    qat.AdaptiveAvgPool2d: quantized.AdaptiveAvgPool2d.from_qat,
    qat.QuantStub: quantized.QuantStub.from_qat,
    qat.DeQuantStub: quantized.DeQuantStub.from_qat,
    qat.QFunctional: quantized.QFunctional.from_qat,
    qat.Elementwise: quantized.Elementwise.from_qat,
    qat.MaxPool2d: quantized.MaxPool2d.from_qat,
    qat.AvgPool2d: quantized.AvgPool2d.from_qat,
    qat.Mean: quantized.Mean.from_qat,
    qat.Add: quantized.Add.from_qat,
    qat.Sub: quantized.Sub.from_qat,
    qat.Mul: quantized.Mul.from_qat,
    qat.Cat: quantized.Cat.from_qat,
    qat.Stack: quantized.Stack.from_qat,
    qat.Dropout: quantized.Dropout.from_qat,
    qat.Interpolate: quantized.Interpolate.from_qat,
    qat.ConvTranspose2d: quantized.ConvTranspose2d.from_qat,
}
"""QAT type -> integer module factory."""
