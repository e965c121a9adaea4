"""QAT QFunctional: ``add``, ``sub``, ``mul``, ``cat`` and ``stack`` followed by an output
fake-quant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qconfig import QConfig


class QFunctional(IntegerEval):
    """One call site's elementwise op with its own output scale."""

    def __init__(self, qconfig: QConfig) -> None:
        super().__init__()
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("QFunctional", qconfig)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> QFunctional:
        # prepare_qat swaps only modules whose qconfig is set.
        return cls(qconfig if qconfig is not None else cast(QConfig, mod.qconfig))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use .add, .cat or .mul")

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(torch.add(a, b)), [a, b], lambda t, *q: t.add(*q))

    def cat(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        app, xs = self.activation_post_process, list(tensors)
        return self.exact_eval(
            lambda: app(torch.cat(xs, dim=dim)), xs, lambda t, *q: t.cat(q, dim=dim)
        )

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(torch.mul(a, b)), [a, b], lambda t, *q: t.mul(*q))

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(torch.sub(a, b)), [a, b], lambda t, *q: t.sub(*q))

    def stack(self, tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        app, xs = self.activation_post_process, list(tensors)
        return self.exact_eval(
            lambda: app(torch.stack(xs, dim=dim)), xs, lambda t, *q: t.stack(q, dim=dim)
        )
