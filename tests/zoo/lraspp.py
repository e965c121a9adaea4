"""The LR-ASPP segmentation family on a small MobileNetV3-style backbone: the high-level
features go through conv-BN-ReLU and are gated by ``x * s`` (``s`` from
``AdaptiveAvgPool2d(1)``, a 1x1 conv and Sigmoid), upsampled bilinearly to the low-level
features, classified, added to the low-level classifier, and upsampled to the input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet_v3 import BlockConfig, ConvBNActivation, InvertedResidual

# in, kernel, expanded, out, SE, activation, stride
BACKBONE = (
    (16, 3, 16, 16, True, "RE", 2),  # stride 4
    (16, 3, 72, 24, False, "RE", 2),  # stride 8: the low-level features
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),  # stride 16: the high-level features
    (40, 5, 240, 40, True, "HS", 1),
)
LOW_LEVEL = 2  # index in ``features`` of the last block at stride 8 (after the stem)


class Backbone(nn.Module):
    """The stem and the inverted residual blocks; returns the stride-8 and the last
    features by name, as a feature extractor of the family does."""

    def __init__(self, width_mult: float = 0.5) -> None:
        super().__init__()
        configs = [BlockConfig(*row, width_mult=width_mult) for row in BACKBONE]
        layers: list[nn.Module] = [
            ConvBNActivation(3, configs[0].input_channels, 3, stride=2, activation=nn.Hardswish)
        ]
        layers.extend(InvertedResidual(cnf) for cnf in configs)
        self.features = nn.Sequential(*layers)
        self.low_channels = configs[LOW_LEVEL - 1].out_channels
        self.high_channels = configs[-1].out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == LOW_LEVEL:
                out["low"] = x
        out["high"] = x
        return out


class LRASPPHead(nn.Module):
    def __init__(
        self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int
    ) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, input: dict[str, torch.Tensor]) -> torch.Tensor:
        low = input["low"]
        high = input["high"]

        x = self.cbr(high)
        s = self.scale(high)
        x = x * s
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)

        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    def __init__(
        self, num_classes: int = 4, width_mult: float = 0.5, inter_channels: int = 32
    ) -> None:
        super().__init__()
        self.backbone = Backbone(width_mult)
        self.classifier = LRASPPHead(
            self.backbone.low_channels, self.backbone.high_channels, num_classes, inter_channels
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        features = self.backbone(input)
        out = self.classifier(features)
        out = F.interpolate(out, size=input.shape[-2:], mode="bilinear", align_corners=False)
        return out
