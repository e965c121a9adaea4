"""Integer linear: int8 x int8 -> int32 (oneDNN's int8 linear where it is exact and the
layer large enough, see ``kernels``; else ``torch._int_mm``), int32 bias, requantized."""

from __future__ import annotations

from typing import Any

import torch

from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized import kernels
from hatcli.quant.nn.quantized.base import clamp_bounds
from hatcli.quant.nn.quantized.int_matmul import int8_matmul
from hatcli.quant.nn.quantized.requantize import requantize
from hatcli.quant.nn.quantized.weighted import WeightedIntegerModule, integer_weight
from hatcli.quant.qtensor import QTensor

ONEDNN_MIN_MACS = 2**26
"""Smaller products take ``torch._int_mm`` (see ``conv.ONEDNN_MIN_MACS``)."""


class Linear(WeightedIntegerModule):
    """Integer linear (+ clamp activation); bias and multipliers as the conv's."""

    _packed: tuple[tuple[int, int], kernels.PackedLinear] | None = None

    @classmethod
    def from_qat(cls, mod: qat.Linear) -> Linear:
        lin = mod.linear
        with torch.no_grad():
            w_int, w_scale = integer_weight(mod.weight_fake_quant, lin.weight)
            bias = lin.bias if lin.bias is not None else torch.zeros(w_int.shape[0])
            app = mod.activation_post_process
            out_scale = app.scale.detach() if app is not None else None
            qmin, qmax = clamp_bounds(mod.act, out_scale)
        return cls(w_int, w_scale, bias.detach(), out_scale, qmin, qmax)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        lead = xi.shape[:-1]
        rows = xi.reshape(-1, xi.shape[-1])
        if self._onednn(rows):
            xu, zp = kernels.as_uint8(rows, kernels.is_nonnegative(x))
            acc = self._packed_linear().accumulate(xu.contiguous(), zp)
        else:
            acc = int8_matmul(rows, self.weight.t())
        p = self.requant_params(s_in)
        acc = (acc + p.bias).reshape(*lead, -1)
        if p.out_scale is not None:
            return QTensor(acc, p.out_scale, axis=acc.dim() - 1)
        assert p.shift is not None and self.output_scale is not None
        q = requantize([(acc, p.mults[0])], p.shift, self.qmin, self.qmax, bound=p.bound)
        return QTensor(q, self.output_scale)

    def _onednn(self, rows: torch.Tensor) -> bool:
        if not rows.is_cpu or kernels.tracing():
            return False
        if rows.shape[0] * self.weight.numel() < ONEDNN_MIN_MACS:
            return False
        return kernels.active_path() != "reference"

    def _packed_linear(self) -> kernels.PackedLinear:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, kernels.PackedLinear(self.weight))
        return self._packed[1]

    def _derived(self) -> dict[str, Any]:
        return {**super()._derived(), "_packed": None}

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"in_features={i}, out_features={o}, clamp=[{self.qmin}, {self.qmax}]"
