"""Linear layers followed by an activation."""

from __future__ import annotations

import torch
from torch import nn


class LinearReLU(nn.Module):
    """``relu(linear(x))``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = nn.ReLU()

    @classmethod
    def from_parts(cls, linear: nn.Linear, act: nn.Module) -> LinearReLU:
        """The block made of existing modules (their Parameters are kept)."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.linear = linear
        block.act = act  # type: ignore[assignment]  # ReLU or ReLU6
        return block

    def fuse_model(self) -> None:
        """HAT's contract; nothing to do: QAT always treats linear + ReLU as one op with
        one output scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))  # type: ignore[no-any-return]  # Module.__call__ is Any
