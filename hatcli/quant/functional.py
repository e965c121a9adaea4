"""QFunctional: elementwise ops between activations, as a module so their output gets a scale.

Use one instance per call site: each instance learns one output scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class QFunctional(nn.Module):
    """Float ``add``, ``cat`` and ``mul``; the QAT and integer versions quantize the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use .add, .cat or .mul")

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return torch.cat(list(tensors), dim=dim)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mul(a, b)
