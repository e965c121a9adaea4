"""DigitsNet: a small residual CNN for 8x8 digit images, the bundled example's model."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.nn import ConvBNAddReLU2d, ConvBNReLU2d
from hatcli.nn.quantizable import QuantizableModel
from hatcli.quant import DeQuantStub, QuantStub


class DigitsNet(QuantizableModel):
    """stem -> residual block (conv-BN-ReLU, conv-BN-add-ReLU) -> downsample -> pool -> fc."""

    output_layers = ("classifier",)  # int32 logits

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBNReLU2d(in_channels, width, 3, padding=1)
        self.block_conv1 = ConvBNReLU2d(width, width, 3, padding=1)
        self.block_conv2 = ConvBNAddReLU2d(width, width, 3, padding=1)
        self.down = ConvBNReLU2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.stem(x)
        x = self.block_conv2(self.block_conv1(x), x)
        x = self.down(x)
        x = self.pool(x).flatten(1)
        return self.dequant(self.classifier(x))


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "num_classes": {"type": "integer", "minimum": 2, "default": 10},
        "width": {"type": "integer", "minimum": 1, "default": 16},
        "in_channels": {"type": "integer", "minimum": 1, "default": 1},
    },
}
