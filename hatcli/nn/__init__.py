"""Base modules for model authors: conv-BN blocks and friends that know how to fuse."""

from hatcli.nn.conv_bn import (
    ConvBN2d,
    ConvBNAdd2d,
    ConvBNAddReLU2d,
    ConvBNReLU2d,
    ConvBNReLU62d,
)
from hatcli.nn.fuse import fuse_children
from hatcli.nn.linear import LinearReLU

__all__ = [
    "ConvBN2d",
    "ConvBNAdd2d",
    "ConvBNAddReLU2d",
    "ConvBNReLU2d",
    "ConvBNReLU62d",
    "LinearReLU",
    "fuse_children",
]
