"""The EfficientNet-B0 family: MBConv blocks with SiLU, squeeze-excitation gated by
Sigmoid, and stochastic depth on the residual branch (a random per-sample drop in
training, the identity in eval)."""

from __future__ import annotations

import torch
from torch import nn

from .mobilenet_v2 import make_divisible


class StochasticDepth(nn.Module):
    """Drops the whole residual branch of a random subset of samples while training
    (``row`` mode) and rescales the rest by ``1 / (1 - p)``."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        if self.mode == "row":  # noqa: SIM108  (the family's own form)
            size = [x.shape[0]] + [1] * (x.ndim - 1)
        else:
            size = [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(survival_rate)
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return x * noise


class ConvBNActivation(nn.Sequential):
    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.SiLU,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_planes, eps=1e-3, momentum=0.01),
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
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        scale = self.scale_activation(scale)
        return scale * x


class MBConv(nn.Module):
    def __init__(
        self,
        input_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        stochastic_depth_prob: float,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers: list[nn.Module] = []
        expanded = make_divisible(input_channels * expand_ratio)
        if expanded != input_channels:
            layers.append(ConvBNActivation(input_channels, expanded, 1))
        layers.append(ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, input_channels // 4)))
        layers.append(ConvBNActivation(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


# expand ratio, kernel, stride, in, out, repeats
STAGES = (
    (1, 3, 1, 16, 8, 1),
    (6, 3, 2, 8, 12, 2),
    (6, 5, 2, 12, 20, 2),
    (6, 3, 2, 20, 40, 1),
)


class EfficientNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        stochastic_depth_prob: float = 0.2,
        dropout: float = 0.2,
        last_channel: int = 96,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNActivation(3, STAGES[0][3], 3, stride=2)]
        total_blocks = sum(stage[-1] for stage in STAGES)
        block_id = 0
        for expand, kernel, stride, cin, cout, repeats in STAGES:
            stage: list[nn.Module] = []
            for i in range(repeats):
                # the drop probability grows linearly with the block's depth
                sd_prob = stochastic_depth_prob * block_id / total_blocks
                stage.append(
                    MBConv(
                        cin if i == 0 else cout,
                        cout,
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                        sd_prob,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*stage))
        layers.append(ConvBNActivation(STAGES[-1][4], last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
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
                init_range = 1.0 / (m.out_features**0.5)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x
