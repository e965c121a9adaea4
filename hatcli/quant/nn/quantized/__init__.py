"""Integer modules: int8 activations and weights, int32 accumulation, no float in between."""

from hatcli.quant.nn.quantized.activation import ReLU, ReLU6
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.conv import Conv2d, ConvAdd2d
from hatcli.quant.nn.quantized.functional import QFunctional
from hatcli.quant.nn.quantized.linear import Linear
from hatcli.quant.nn.quantized.pooling import AdaptiveAvgPool2d
from hatcli.quant.nn.quantized.stubs import DeQuantStub, QuantStub

__all__ = [
    "AdaptiveAvgPool2d",
    "Conv2d",
    "ConvAdd2d",
    "DeQuantStub",
    "IntegerModule",
    "Linear",
    "QFunctional",
    "QuantStub",
    "ReLU",
    "ReLU6",
]
