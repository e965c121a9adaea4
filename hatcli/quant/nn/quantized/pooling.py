"""Integer adaptive average pooling: int32 window sums requantized by ``s_in / (n * s_out)``."""

from __future__ import annotations

import torch

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor


class AdaptiveAvgPool2d(IntegerModule):
    """Supports output sizes that divide the input size (e.g. global pooling, size 1)."""

    output_scale: torch.Tensor

    def __init__(self, output_size: int | tuple[int, int], output_scale: torch.Tensor) -> None:
        super().__init__()
        self.output_size = output_size
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.AdaptiveAvgPool2d) -> AdaptiveAvgPool2d:
        return cls(mod.output_size, mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        h, w = xi.shape[-2:]
        size = self.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise ValueError(f"integer adaptive pooling needs {oh}x{ow} to divide {h}x{w}")
        kh, kw = h // oh, w // ow
        blocks = xi.reshape(*xi.shape[:-2], oh, kh, ow, kw).to(torch.int32)
        sums = blocks.sum(dim=(-3, -1), dtype=torch.int32)
        m, shift = self.multiplier(s_in, kh * kw)
        return QTensor(requantize([(sums, m)], shift), self.output_scale)

    def multiplier(self, s_in: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, shift)`` rescaling a sum of ``window`` int8 values to the output scale."""
        factor = torch.as_tensor(s_in / window, dtype=torch.float64) / self.output_scale.double()
        (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX * window])
        return m, shift
