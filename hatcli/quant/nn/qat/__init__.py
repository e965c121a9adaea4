"""QAT modules: float ops with fake-quantized weights and outputs."""

from hatcli.quant.nn.qat.activation import ReLU, ReLU6
from hatcli.quant.nn.qat.arithmetic import Add, Cat, Mul, Stack, Sub
from hatcli.quant.nn.qat.conv_bn import (
    Conv2d,
    ConvBN2d,
    ConvBNAdd2d,
    ConvBNAddReLU2d,
    ConvBNReLU2d,
    ConvBNReLU62d,
)
from hatcli.quant.nn.qat.conv_transpose import ConvTranspose2d
from hatcli.quant.nn.qat.dropout import Dropout
from hatcli.quant.nn.qat.elementwise import Elementwise
from hatcli.quant.nn.qat.functional import QFunctional
from hatcli.quant.nn.qat.linear import Linear, LinearReLU
from hatcli.quant.nn.qat.mean import Mean
from hatcli.quant.nn.qat.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from hatcli.quant.nn.qat.resize import Interpolate
from hatcli.quant.nn.qat.stubs import DeQuantStub, QuantStub

__all__ = [
    "AdaptiveAvgPool2d",
    "Add",
    "AvgPool2d",
    "Cat",
    "Conv2d",
    "ConvBN2d",
    "ConvBNAdd2d",
    "ConvBNAddReLU2d",
    "ConvBNReLU2d",
    "ConvBNReLU62d",
    "ConvTranspose2d",
    "DeQuantStub",
    "Dropout",
    "Elementwise",
    "Interpolate",
    "Linear",
    "LinearReLU",
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
