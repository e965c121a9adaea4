"""QuantStub and DeQuantStub: where float input becomes quantized and where outputs leave."""

from __future__ import annotations

import torch
from torch import nn


class QuantStub(nn.Module):
    """Identity in the float model; fake-quantizes in QAT, quantizes to int8 when converted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DeQuantStub(nn.Module):
    """Identity in the float and QAT models; turns integers back into float when converted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
