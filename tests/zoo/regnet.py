"""The RegNet-Y family: residual bottleneck blocks whose 3x3 conv is grouped (fixed
group width), with squeeze-excitation (ReLU, Sigmoid) inside, ReLU activations, a
projection shortcut (1x1 conv, BN) when the shape changes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class ConvBNActivation(nn.Sequential):
    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.1),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class BottleneckTransform(nn.Sequential):
    """1x1 conv, grouped 3x3 conv (the stride), squeeze-excitation, 1x1 conv without
    activation."""

    def __init__(
        self, width_in: int, width_out: int, stride: int, group_width: int, se_ratio: float
    ) -> None:
        groups = max(1, width_out // group_width)
        super().__init__()
        self.a = ConvBNActivation(width_in, width_out, 1)
        self.b = ConvBNActivation(width_out, width_out, 3, stride=stride, groups=groups)
        self.se = SqueezeExcitation(width_out, max(1, round(se_ratio * width_in)))
        self.c = ConvBNActivation(width_out, width_out, 1, activation=None)


class ResBottleneckBlock(nn.Module):
    def __init__(
        self, width_in: int, width_out: int, stride: int, group_width: int, se_ratio: float
    ) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvBNActivation(width_in, width_out, 1, stride=stride, activation=None)
        self.f = BottleneckTransform(width_in, width_out, stride, group_width, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:  # noqa: SIM108  (the family's own form)
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNetY(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        stem_width: int = 8,
        widths: Sequence[int] = (16, 32, 64),
        depths: Sequence[int] = (1, 1, 2),
        group_width: int = 8,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.stem = ConvBNActivation(3, stem_width, 3, stride=2)
        stages: list[tuple[str, nn.Module]] = []
        width_in = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(
                    ResBottleneckBlock(width_in, width, 2 if j == 0 else 1, group_width, se_ratio)
                )
                width_in = width
            stages.append((f"block{i + 1}", nn.Sequential(*blocks)))
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        x = self.fc(x)
        return x
