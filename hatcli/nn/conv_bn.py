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

    @classmethod
    def from_parts(
        cls, conv: nn.Conv2d, bn: nn.Module | None = None, act: nn.Module | None = None
    ) -> ConvBN2d:
        """The block made of existing modules (their Parameters are kept): how graph-mode
        preparation fuses a traced conv, BN and activation. ``bn=None`` is a conv without
        BN; ``act`` is the activation of the blocks that have one."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.conv = conv
        block.bn = bn if bn is not None else nn.Identity()
        if act is not None:
            block.act = act
        return block

    def fuse_model(self) -> None:
        """HAT's contract; nothing to do: QAT always treats conv, BN (and what follows)
        as one op, and the QAT module built from the block decides by its qat_mode
        whether BN is folded into the conv first (``fuse_bn``) or kept."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))  # type: ignore[no-any-return]  # Module.__call__ is Any


class ConvBNReLU2d(ConvBN2d):
    """``relu(bn(conv(x)))``."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]  # Module.__call__ is Any


class ConvBNReLU62d(ConvBN2d):
    """``relu6(bn(conv(x)))``."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]  # Module.__call__ is Any


class ConvBNAdd2d(ConvBN2d):
    """``bn(conv(x)) + residual``."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.bn(self.conv(x)) + residual  # type: ignore[no-any-return]  # Module.__call__ is Any


class ConvBNAddReLU2d(ConvBN2d):
    """``relu(bn(conv(x)) + residual)``: the tail of a residual block."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.act(self.bn(self.conv(x)) + residual)  # type: ignore[no-any-return]  # Module.__call__ is Any
