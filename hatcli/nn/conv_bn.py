"""Conv2d + BatchNorm2d blocks, optionally followed by a residual add and an activation."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN2d(nn.Module):
    """``bn(conv(x))``; the conv has no bias of its own (BN provides it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.fused = False

    def fuse_model(self) -> None:
        """Prepare for QAT according to the qat_mode.

        ``fuse_bn``: fold BN into the conv (the conv gains a bias, ``bn`` becomes Identity);
        the eval output is unchanged up to float rounding. With-BN modes: only mark the
        block fused, so QAT keeps the BN. Calling it again does nothing.
        """
        # Imported here: hatcli.quant imports hatcli.nn for its swap tables.
        from hatcli.quant.fuse_modules import fold_bn_into_conv_
        from hatcli.quant.qat_mode import QATMode, get_qat_mode

        if get_qat_mode() is QATMode.FuseBN and isinstance(self.bn, nn.BatchNorm2d):
            fold_bn_into_conv_(self.conv, self.bn)
            self.bn = nn.Identity()
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBNReLU2d(ConvBN2d):
    """``relu(bn(conv(x)))``."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBNReLU62d(ConvBN2d):
    """``relu6(bn(conv(x)))``."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBNAdd2d(ConvBN2d):
    """``bn(conv(x)) + residual``."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.bn(self.conv(x)) + residual


class ConvBNAddReLU2d(ConvBN2d):
    """``relu(bn(conv(x)) + residual)``: the tail of a residual block."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.act(self.bn(self.conv(x)) + residual)
