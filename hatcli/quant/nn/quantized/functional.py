"""Integer QFunctional: add, sub, cat and stack rescale every input to the output scale;
mul multiplies the integers and rescales by ``s_a * s_b / s_out``. Operands broadcast as
torch's do.

How it is computed: an int8 input has 256 values and a pair of them 65536, so each
requantization is tabulated once per input scale(s) by ``requantize`` itself (every
entry is its result for that input) and applied by a table lookup: the same integers as
requantizing each element, ~3x faster than its float64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import torch

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized import lookup
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor


class QFunctional(IntegerModule):
    """Integer ``add``, ``sub``, ``mul``, ``cat`` and ``stack`` with one output scale."""

    output_scale: torch.Tensor

    def __init__(self, output_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))
        self._tables: dict[tuple[object, ...], torch.Tensor | None] = {}

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

    def _table(self, key: tuple[object, ...]) -> torch.Tensor | None:
        """The lookup table of ``key`` (``("add", s_a, s_b, sign)``, ``("mul", s_a, s_b)``
        or ``("one", s)``), built by ``requantize`` over every input; ``None`` for a
        rescaling by exactly 1 (the identity). Keyed by the output scale too."""
        key = (*key, float(self.output_scale))
        if key not in self._tables:
            q = lookup.int8_values()
            if key[0] == "one":
                (m,), shift = self.multipliers([key[1]])  # type: ignore[list-item]
                table = requantize([(q, m)], shift)
                self._tables[key] = None if torch.equal(table, q) else lookup.by_uint8(table)
            else:
                qa, qb = q.repeat_interleave(256), q.repeat(256)
                if key[0] == "mul":
                    prod = qa.to(torch.int32) * qb.to(torch.int32)
                    table = self._requant([(prod, key[1] * key[2])], ABS_MAX * ABS_MAX)  # type: ignore[operator]
                else:
                    (ma, mb), shift = self.multipliers([key[1], key[2]])  # type: ignore[list-item]
                    table = requantize([(qa, ma), (qb, key[3] * mb)], shift)  # type: ignore[operator]
                self._tables[key] = table
        return self._tables[key]

    def add(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        return QTensor(self._add(a, b, 1), self.output_scale)

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        return QTensor(self._add(a, b, -1), self.output_scale)

    def _add(self, a: torch.Tensor, b: torch.Tensor, sign: int) -> torch.Tensor:
        """``a + sign * b`` requantized, both terms with one shift."""
        (xa, sa), (xb, sb) = self._int8_input(a, "a"), self._int8_input(b, "b")
        xa, xb = torch.broadcast_tensors(xa, xb)  # type: ignore[no-untyped-call]  # torch: untyped
        table = self._table(("add", sa, sb, sign))
        assert table is not None
        return lookup.lookup_pairs(table, xa, xb)

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> QTensor:
        return QTensor(torch.cat(self._rescaled(tensors), dim=dim), self.output_scale)

    def stack(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> QTensor:
        return QTensor(torch.stack(self._rescaled(tensors), dim=dim), self.output_scale)

    def _rescaled(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t in tensors:
            x, s = self._int8_input(t, "tensors")
            table = self._table(("one", s))
            out.append(x if table is None else lookup.lookup(table, x))
        return out

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:
        (xa, sa), (xb, sb) = self._int8_input(a, "a"), self._int8_input(b, "b")
        xa, xb = torch.broadcast_tensors(xa, xb)  # type: ignore[no-untyped-call]  # torch: untyped
        table = self._table(("mul", sa, sb))
        assert table is not None
        return QTensor(lookup.lookup_pairs(table, xa, xb), self.output_scale)
