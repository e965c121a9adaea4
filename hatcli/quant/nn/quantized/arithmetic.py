"""Integer arithmetic modules: ``QFunctional``'s integer add, sub, mul, cat and stack,
called like the op."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import torch

from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.functional import QFunctional
from hatcli.quant.qtensor import QTensor


class Add(QFunctional):
    """``a + b`` at the output scale."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:  # type: ignore[override]
        return self.add(a, b)


class Sub(QFunctional):
    """``a - b`` at the output scale."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:  # type: ignore[override]
        return self.sub(a, b)


class Mul(QFunctional):
    """``a * b`` at the output scale."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> QTensor:  # type: ignore[override]
        return self.mul(a, b)


class _Join(QFunctional):
    def __init__(self, dim: int, output_scale: torch.Tensor) -> None:
        super().__init__(output_scale)
        self.dim = dim

    @classmethod
    def from_qat(cls, mod: qat.QFunctional) -> Self:
        if not isinstance(mod, qat.Cat | qat.Stack):
            raise TypeError(f"{cls.__name__}.from_qat expects a QAT Cat or Stack")
        return cls(mod.dim, mod.activation_post_process.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Cat(_Join):
    """``cat`` of the inputs, each rescaled to the output scale."""

    def forward(self, tensors: Sequence[torch.Tensor]) -> QTensor:  # type: ignore[override]
        return self.cat(tensors, self.dim)


class Stack(_Join):
    """``stack`` of the inputs, each rescaled to the output scale."""

    def forward(self, tensors: Sequence[torch.Tensor]) -> QTensor:  # type: ignore[override]
        return self.stack(tensors, self.dim)
