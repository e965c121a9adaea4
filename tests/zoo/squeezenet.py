"""The SqueezeNet 1.1 family: Fire modules (squeeze 1x1 + ReLU, expand 1x1 and 3x3
branches with ReLU, ``torch.cat``), ``MaxPool2d(3, 2, ceil_mode=True)``, and a
classifier of Dropout, a 1x1 conv, ReLU and ``AdaptiveAvgPool2d`` before the flatten."""

from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    def __init__(
        self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, 4 * w, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(4 * w, w, 4 * w, 4 * w),
            Fire(8 * w, w, 4 * w, 4 * w),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(8 * w, 2 * w, 8 * w, 8 * w),
            Fire(16 * w, 2 * w, 8 * w, 8 * w),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16 * w, 3 * w, 12 * w, 12 * w),
        )
        final_conv = nn.Conv2d(24 * w, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            final_conv,
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)
