"""MobileNetV2 for 32x32 inputs (CIFAR style), built from the quantizable blocks of hatcli.nn."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.nn import ConvBN2d, ConvBNAdd2d, ConvBNReLU62d, fuse_children
from hatcli.nn.quantizable import QuantizableModel
from hatcli.quant import DeQuantStub, QuantStub

# (expansion t, output channels c, repeats n, first stride s); the ImageNet settings with
# the stem and the 24-channel stage at stride 1, so 32x32 inputs end at 4x4.
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; the projection
    adds the input (a quantized add, ``ConvBNAdd2d``) when stride is 1 and shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module | None = None
        if expand != 1:
            self.expand = ConvBNReLU62d(in_channels, hidden, 1)
        self.depthwise = ConvBNReLU62d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)
        proj = ConvBNAdd2d if self.use_residual else ConvBN2d
        self.project = proj(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        return self.project(y, x) if self.use_residual else self.project(y)

    def fuse_model(self) -> None:
        fuse_children(self)


class MobileNetV2(QuantizableModel):
    """CIFAR MobileNetV2: 3x3 stem at stride 1, inverted residual stages
    (``CIFAR_SETTINGS``), 1x1 conv to 1280 (more when ``width_mult > 1``), pool, linear."""

    output_layers = ("classifier",)  # int32 logits

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        self.quant = QuantStub()
        c_in = make_divisible(32 * width_mult)
        self.stem = ConvBNReLU62d(in_channels, c_in, 3, padding=1)
        blocks: list[nn.Module] = []
        for t, c, n, s in CIFAR_SETTINGS:
            c_out = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        self.features = nn.Sequential(*blocks)
        last = make_divisible(1280 * max(1.0, width_mult))
        self.head = ConvBNReLU62d(c_in, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        self.dequant = DeQuantStub()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.quant(x))
        x = self.head(self.features(x))
        x = self.pool(x).flatten(1)
        return self.dequant(self.classifier(x))


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "num_classes": {"type": "integer", "minimum": 2, "default": 10},
        "in_channels": {"type": "integer", "minimum": 1, "default": 3},
        "width_mult": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
    },
}
