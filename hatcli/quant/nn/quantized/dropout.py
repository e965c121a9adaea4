"""Integer dropout: the identity (the integer model only runs inference)."""

from __future__ import annotations

import torch

from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule


class Dropout(IntegerModule):
    """Returns its input."""

    @classmethod
    def from_qat(cls, mod: qat.Dropout) -> Dropout:
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        return x
