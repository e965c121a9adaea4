"""QAT mean over dimensions: ``FQ(x.mean(dim, keepdim))``."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import plain
from hatcli.quant.qconfig import QConfig


class Mean(IntegerEval):
    """``FQ(x.mean(dim, keepdim))``."""

    def __init__(
        self, dim: int | tuple[int, ...], keepdim: bool = False, qconfig: QConfig | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("Mean", qconfig)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> Mean:
        """From a float module with ``dim`` and ``keepdim`` attributes."""
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        return cls(mod.dim, bool(getattr(mod, "keepdim", False)), qconfig)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(plain(x).mean(self.dim, self.keepdim)), [x])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"
