"""QAT stubs: QuantStub fake-quantizes the float input; DeQuantStub passes through."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.qat_tensor import plain
from hatcli.quant.qconfig import QConfig


class QuantStub(nn.Module):
    """Fake-quantizes the model input; its scale is the integer model's input scale."""

    def __init__(self, qconfig: QConfig) -> None:
        super().__init__()
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("QuantStub", qconfig)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> QuantStub:
        # prepare_qat swaps only modules whose qconfig is set.
        return cls(qconfig if qconfig is not None else cast(QConfig, mod.qconfig))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(x)  # type: ignore[no-any-return]  # Module.__call__


class DeQuantStub(nn.Module):
    """Identity in QAT: outputs are already float; they leave as plain tensors."""

    def __init__(self, qconfig: QConfig | None = None) -> None:
        super().__init__()
        self.qconfig = qconfig

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> DeQuantStub:
        return cls(qconfig if qconfig is not None else getattr(mod, "qconfig", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return plain(x)
