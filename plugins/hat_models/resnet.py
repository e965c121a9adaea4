"""ResNet-18 for 32x32 inputs (CIFAR style), built from the quantizable blocks of hatcli.nn."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.nn import ConvBN2d, ConvBNAddReLU2d, ConvBNReLU2d, fuse_children
from hatcli.nn.quantizable import QuantizableModel
from hatcli.quant import DeQuantStub, QuantStub


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the add is the quantized add of
    ``ConvBNAddReLU2d``. The shortcut is a 1x1 ConvBN2d when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = ConvBNAddReLU2d(out_channels, out_channels, 3, padding=1)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvBN2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), shortcut)

    def fuse_model(self) -> None:
        fuse_children(self)


class ResNet18(QuantizableModel):
    """CIFAR ResNet-18: 3x3 stem (stride 1, no max-pool), 4 stages of 2 BasicBlocks with
    ``width * [1, 2, 4, 8]`` channels and strides ``[1, 2, 2, 2]``, average pool, linear."""

    output_layers = ("classifier",)  # int32 logits

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBNReLU2d(in_channels, width, 3, padding=1)
        stages: list[nn.Module] = []
        c_in = width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**i
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.dequant = DeQuantStub()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.quant(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.pool(x).flatten(1)
        return self.dequant(self.classifier(x))


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "num_classes": {"type": "integer", "minimum": 2, "default": 10},
        "in_channels": {"type": "integer", "minimum": 1, "default": 3},
        "width": {"type": "integer", "minimum": 1, "default": 64},
    },
}
