"""QAT activations outside fused blocks.

ReLU keeps its input's grid (and scale), so it needs no fake-quant; ReLU6 may clip at a
value off the grid, so its output is fake-quantized.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qconfig import QConfig

_RELU6 = nn.ReLU6()


class ReLU(nn.Module):
    """``relu(x)``; the integer version is a clamp at 0 with the input's scale."""

    def __init__(self, qconfig: QConfig | None = None) -> None:
        super().__init__()
        self.qconfig = qconfig

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> ReLU:
        return cls(qconfig if qconfig is not None else getattr(mod, "qconfig", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class ReLU6(IntegerEval):
    """``FQ(relu6(x))``."""

    def __init__(self, qconfig: QConfig) -> None:
        super().__init__()
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("ReLU6", qconfig)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> ReLU6:
        # prepare_qat swaps only modules whose qconfig is set.
        return cls(qconfig if qconfig is not None else cast(QConfig, mod.qconfig))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app.after_activation(x, _RELU6), [x])
