"""Integer modules: int8 activations and weights, int32 accumulation, no float in between."""

from hatcli.quant.nn.quantized.activation import ReLU, ReLU6
from hatcli.quant.nn.quantized.arithmetic import Add, Cat, Mul, Stack, Sub
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.conv import Conv2d, ConvAdd2d
from hatcli.quant.nn.quantized.conv_transpose import ConvTranspose2d
from hatcli.quant.nn.quantized.dropout import Dropout
from hatcli.quant.nn.quantized.elementwise import Elementwise
from hatcli.quant.nn.quantized.functional import QFunctional
from hatcli.quant.nn.quantized.linear import Linear
from hatcli.quant.nn.quantized.mean import Mean
from hatcli.quant.nn.quantized.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from hatcli.quant.nn.quantized.resize import Interpolate
from hatcli.quant.nn.quantized.stubs import DeQuantStub, QuantStub

__all__ = [
    "AdaptiveAvgPool2d",
    "Add",
    "AvgPool2d",
    "Cat",
    "Conv2d",
    "ConvAdd2d",
    "ConvTranspose2d",
    "DeQuantStub",
    "Dropout",
    "Elementwise",
    "IntegerModule",
    "Interpolate",
    "Linear",
    "MaxPool2d",
    "Mean",
    "Mul",
    "QFunctional",
    "QuantStub",
    "ReLU",
    "ReLU6",
    "Stack",
    "Sub",
]
