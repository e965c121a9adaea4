"""The MobileNetV3-Small family: inverted residual blocks with Hardswish or ReLU,
squeeze-excitation (``AdaptiveAvgPool2d(1)``, 1x1 convs with bias, ReLU, Hardsigmoid,
``scale * x``), and a Linear-Hardswish-Dropout-Linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from .mobilenet_v2 import make_divisible


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
            nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_factor: int = 4) -> None:
        super().__init__()
        squeeze_channels = make_divisible(input_channels // squeeze_factor, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.hardsigmoid = nn.Hardsigmoid(inplace=True)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.relu(scale)
        scale = self.fc2(scale)
        return self.hardsigmoid(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale(x)
        return scale * x


class BlockConfig:
    def __init__(
        self,
        input_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        width_mult: float,
    ) -> None:
        self.input_channels = make_divisible(input_channels * width_mult)
        self.kernel = kernel
        self.expanded_channels = make_divisible(expanded_channels * width_mult)
        self.out_channels = make_divisible(out_channels * width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride


class InvertedResidual(nn.Module):
    def __init__(self, cnf: BlockConfig) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                ConvBNActivation(
                    cnf.input_channels, cnf.expanded_channels, 1, activation=activation
                )
            )
        layers.append(
            ConvBNActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                cnf.kernel,
                stride=cnf.stride,
                groups=cnf.expanded_channels,
                activation=activation,
            )
        )
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels))
        layers.append(ConvBNActivation(cnf.expanded_channels, cnf.out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


# in, kernel, expanded, out, SE, activation, stride
SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
)


class MobileNetV3Small(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 0.5,
        last_channel: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        configs = [BlockConfig(*row, width_mult=width_mult) for row in SMALL]
        first = configs[0].input_channels
        layers: list[nn.Module] = [ConvBNActivation(3, first, 3, stride=2, activation=nn.Hardswish)]
        layers.extend(InvertedResidual(cnf) for cnf in configs)
        last_in = configs[-1].out_channels
        last_conv = 6 * last_in
        layers.append(ConvBNActivation(last_in, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x
