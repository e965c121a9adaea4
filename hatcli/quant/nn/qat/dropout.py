"""QAT dropout: dropout in training, the identity in eval (the scale is kept)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant.qat_tensor import plain
from hatcli.quant.qconfig import QConfig


class Dropout(nn.Module):
    """``dropout(x)`` while training; in eval ``x`` itself, as the integer model has it.

    A kept value is scaled by ``1 / (1 - p)``, off its grid: the training output is a
    plain tensor, which the next layer fake-quantizes if it quantizes its input.
    """

    qconfig: QConfig | None = None

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    @classmethod
    def from_float(cls, mod: nn.Dropout, qconfig: QConfig | None = None) -> Dropout:
        q = cls(mod.p)
        q.qconfig = qconfig if qconfig is not None else getattr(mod, "qconfig", None)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return F.dropout(plain(x), self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"
