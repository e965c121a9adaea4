"""Integer activations: ReLU is a clamp at 0 keeping the scale; ReLU6 requantizes to its
output scale and clamps at ``round(6 / s_out)`` (tabulated over the 256 int8 inputs by
``requantize`` once per input scale, then looked up)."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized import kernels, lookup
from hatcli.quant.nn.quantized.base import IntegerModule, clamp_bounds
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor


class ReLU(IntegerModule):
    """``max(q, 0)``."""

    @classmethod
    def from_qat(cls, mod: qat.ReLU) -> ReLU:
        return cls()

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        out = QTensor(xi.clamp(min=0), torch.as_tensor(s_in, dtype=torch.float32))
        return kernels.mark_nonnegative(out)


class ReLU6(IntegerModule):
    """``clamp(round(q * s_in / s_out), 0, round(6 / s_out))``."""

    output_scale: torch.Tensor

    def __init__(self, output_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))
        self.qmin, self.qmax = clamp_bounds(nn.ReLU6(), self.output_scale)
        self._tables: dict[tuple[float, float], torch.Tensor] = {}

    @classmethod
    def from_qat(cls, mod: qat.ReLU6) -> ReLU6:
        return cls(mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        key = (s_in, float(self.output_scale))
        if key not in self._tables:
            m, shift = self.multiplier(s_in)
            q = lookup.int8_values()
            table = requantize([(q, m)], shift, self.qmin, self.qmax)
            self._tables[key] = lookup.by_uint8(table)
        out = QTensor(lookup.lookup(self._tables[key], xi), self.output_scale)
        return kernels.mark_nonnegative(out)

    def multiplier(self, s_in: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, shift)`` rescaling an int8 input of scale ``s_in`` to the output scale."""
        factor = torch.as_tensor(s_in, dtype=torch.float64) / self.output_scale.double()
        (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX])
        return m, shift
