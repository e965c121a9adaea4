"""Integer QFunctional: add, sub, cat and stack rescale every input to the output scale;
mul multiplies the integers and rescales by ``s_a * s_b / s_out``. Operands broadcast as
torch's do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import torch

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor


class QFunctional(IntegerModule):
    """Integer ``add``, ``sub``, ``mul``, ``cat`` and ``stack`` with one output scale."""

    output_scale: torch.Tensor

    def __init__(self, output_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.QFunctional) -> Self:
        return cls(mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use .add, .cat or .mul")

    def multipliers(
        self, scales: list[float], bound: int = ABS_MAX
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([m_i], shift)`` rescaling integers of scales ``s_i`` (``|x| <= bound``)."""
        s_out = self.output_scale.double()
        factors = [torch.as_tensor(s, dtype=torch.float64) / s_out for s in scales]
        return quantize_multiplier(*factors, x_bounds=[bound] * len(scales))

    def _requant(self, xs: list[tuple[torch.Tensor, float]], bound: int = ABS_MAX) -> torch.Tensor:
        mults, shift = self.multipliers([s for _, s in xs], bound)
        return requantize([(x, m) for (x, _), m in zip(xs, mults, strict=True)], shift)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        return QTensor(self._add(a, b, 1), self.output_scale)

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        return QTensor(self._add(a, b, -1), self.output_scale)

    def _add(self, a: torch.Tensor, b: torch.Tensor, sign: int) -> torch.Tensor:
        """``a + sign * b`` requantized, both terms with one shift."""
        (xa, sa), (xb, sb) = self._int8_input(a, "a"), self._int8_input(b, "b")
        xa, xb = torch.broadcast_tensors(xa, xb)  # type: ignore[no-untyped-call]  # torch: untyped
        (ma, mb), shift = self.multipliers([sa, sb])
        return requantize([(xa, ma), (xb, sign * mb)], shift)

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> QTensor:
        return QTensor(torch.cat(self._rescaled(tensors), dim=dim), self.output_scale)

    def stack(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> QTensor:
        return QTensor(torch.stack(self._rescaled(tensors), dim=dim), self.output_scale)

    def _rescaled(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self._requant([self._int8_input(t, "tensors")]) for t in tensors]

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        (xa, sa), (xb, sb) = self._int8_input(a, "a"), self._int8_input(b, "b")
        prod = xa.to(torch.int32) * xb.to(torch.int32)
        return QTensor(self._requant([(prod, sa * sb)], ABS_MAX * ABS_MAX), self.output_scale)
