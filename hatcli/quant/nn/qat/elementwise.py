"""QAT elementwise functions of one activation (sigmoid, GELU, ...): ``FQ(fn(x))``.

An int8 input takes only 256 values, so the integer model computes any such function
exactly as a lookup table; QAT eval runs that table (``IntegerEval``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import plain
from hatcli.quant.qconfig import QConfig


def function_name(fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """A module's class name, a function's own name."""
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return str(getattr(fn, "__name__", type(fn).__name__))


class Elementwise(IntegerEval):
    """``FQ(fn(x))`` for an elementwise ``fn``; ``name`` labels it in reprs and reports."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        qconfig: QConfig,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = fn  # an nn.Module becomes the child ``fn``
        self.qconfig = qconfig
        self.name = name if name is not None else function_name(fn)
        self.activation_post_process = output_fake_quant(self.name, qconfig)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> Elementwise:
        """``fn`` is a copy of the float activation module."""
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        fn = copy.deepcopy(mod)
        fn.__dict__.pop("qconfig", None)  # the copy is a function here, not a module to swap
        return cls(fn, qconfig)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(self.fn(plain(x))), [x])

    def extra_repr(self) -> str:
        return "" if isinstance(self.fn, nn.Module) else f"fn={self.name}"
