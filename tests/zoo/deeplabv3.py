"""The DeepLabV3 segmentation family: an ASPP head (a 1x1 conv-BN-ReLU branch, dilated
3x3 conv-BN-ReLU branches, and a pooling branch ``AdaptiveAvgPool2d(1)``-conv-BN-ReLU
brought back with ``F.interpolate(size=x.shape[-2:], mode="bilinear")``), ``torch.cat``,
a 1x1-BN-ReLU-Dropout projection, a 3x3 conv-BN-ReLU and a 1x1 classifier, on a small
dilated residual backbone (output stride 8); the logits are upsampled to the input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, conv1x1


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 32
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            )
        ]
        for rate in atrous_rates:
            modules.append(ASPPConv(in_channels, out_channels, rate))
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)

        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = []
        for conv in self.convs:
            res.append(conv(x))
        res_cat = torch.cat(res, dim=1)
        return self.project(res_cat)


class DeepLabHead(nn.Sequential):
    def __init__(
        self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], channels: int
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class Backbone(nn.Module):
    """A residual trunk of BasicBlocks: stride 2 stem, stride 2 and 4 stages, then a
    dilated stage (dilation 2 instead of a stride) so the output stride is 8."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(
            width,
            2 * width,
            stride=2,
            downsample=nn.Sequential(conv1x1(width, 2 * width, 2), nn.BatchNorm2d(2 * width)),
        )
        self.layer3 = BasicBlock(
            2 * width,
            4 * width,
            stride=2,
            downsample=nn.Sequential(conv1x1(2 * width, 4 * width, 2), nn.BatchNorm2d(4 * width)),
        )
        self.layer4 = BasicBlock(4 * width, 4 * width)
        # dilate the last block's convs instead of striding
        for conv in (self.layer4.conv1, self.layer4.conv2):
            conv.dilation, conv.padding = (2, 2), (2, 2)
        self.out_channels = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DeepLabV3(nn.Module):
    def __init__(
        self,
        num_classes: int = 4,
        width: int = 8,
        aspp_channels: int = 32,
        atrous_rates: Sequence[int] = (1, 2, 3),
    ) -> None:
        super().__init__()
        self.backbone = Backbone(width)
        self.classifier = DeepLabHead(
            self.backbone.out_channels, num_classes, atrous_rates, aspp_channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        x = self.classifier(features)
        x = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
        return x
