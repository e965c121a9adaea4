"""Integer mean: the exact int64 sum over the dimensions, requantized by ``s_in / (n * s_out)``."""

from __future__ import annotations

import math

import torch

from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.pooling import average_multipliers
from hatcli.quant.nn.quantized.requantize import requantize
from hatcli.quant.qtensor import QTensor


class Mean(IntegerModule):
    """``round(sum(q) * s_in / (n * s_out))`` over ``dim``."""

    output_scale: torch.Tensor

    def __init__(
        self, dim: int | tuple[int, ...], keepdim: bool, output_scale: torch.Tensor
    ) -> None:
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.Mean) -> Mean:
        return cls(mod.dim, mod.keepdim, mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        dims = (self.dim,) if isinstance(self.dim, int) else tuple(self.dim)
        n = math.prod(xi.shape[d] for d in dims)
        sums = xi.sum(dim=dims, keepdim=self.keepdim, dtype=torch.int64)
        m, shift = average_multipliers(s_in, torch.tensor(n), self.output_scale, n)
        return QTensor(requantize([(sums, m)], shift), self.output_scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"
