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
        self.fused = False

    def fuse_model(self) -> None:
        """Mark the block fused: QAT treats linear + ReLU as one op with one output scale."""
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))  # type: ignore[no-any-return]  # Module.__call__ is Any
