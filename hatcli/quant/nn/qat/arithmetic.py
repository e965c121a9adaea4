"""QAT arithmetic between activations as modules called like the op: ``Add()(a, b)``,
``Cat(dim)([a, b])``. Each is a ``QFunctional`` call site: one output fake-quant, inputs
of any scales (the integer model rescales each to the output's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self, cast

import torch
from torch import nn

from hatcli.quant.nn.qat.functional import QFunctional
from hatcli.quant.qconfig import QConfig


class Add(QFunctional):
    """``FQ(a + b)``, broadcasting."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.add(a, b)


class Sub(QFunctional):
    """``FQ(a - b)``, broadcasting."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.sub(a, b)


class Mul(QFunctional):
    """``FQ(a * b)``, broadcasting (e.g. a squeeze-excitation gate [N, C, 1, 1])."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.mul(a, b)


class _Join(QFunctional):
    """Joins a sequence of activations along ``dim``."""

    def __init__(self, dim: int, qconfig: QConfig) -> None:
        super().__init__(qconfig)
        self.dim = dim

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> Self:
        """From a float module with a ``dim`` attribute."""
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        return cls(int(getattr(mod, "dim")), qconfig)  # noqa: B009  (no float type declares it)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Cat(_Join):
    """``FQ(cat(tensors, dim))``."""

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return self.cat(tensors, self.dim)


class Stack(_Join):
    """``FQ(stack(tensors, dim))``."""

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return self.stack(tensors, self.dim)
