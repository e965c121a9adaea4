"""QAT average pooling: the mean leaves the input grid, so it gets an output fake-quant."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qconfig import QConfig


class AdaptiveAvgPool2d(IntegerEval):
    """``FQ(adaptive_avg_pool2d(x))``."""

    def __init__(self, output_size: int | tuple[int, int], qconfig: QConfig) -> None:
        super().__init__()
        self.output_size = output_size
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("AdaptiveAvgPool2d", qconfig)

    @classmethod
    def from_float(
        cls, mod: nn.AdaptiveAvgPool2d, qconfig: QConfig | None = None
    ) -> AdaptiveAvgPool2d:
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        return cls(mod.output_size, qconfig)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(F.adaptive_avg_pool2d(x, self.output_size)), [x])
