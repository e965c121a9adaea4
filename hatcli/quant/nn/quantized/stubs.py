"""Integer stubs: the only places the integer model touches float activations."""

from __future__ import annotations

import torch

from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.qtensor import QTensor


class QuantStub(IntegerModule):
    """float -> int8 with the QAT input scale, rounding exactly as the QAT fake-quant."""

    scale: torch.Tensor

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.QuantStub) -> QuantStub:
        return cls(mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        self._check()
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the integer model cannot backpropagate: use the QAT model")
        scale = self.scale.to(x.device)
        zp = torch.zeros((), dtype=torch.int32, device=x.device)
        x_fq = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, QUANT_MIN, QUANT_MAX)
        # x_fq is q * scale in float32; dividing recovers q exactly.
        return QTensor(torch.round(x_fq / scale).to(torch.int8), self.scale)


class DeQuantStub(IntegerModule):
    """QTensor -> float32."""

    @classmethod
    def from_qat(cls, mod: qat.DeQuantStub) -> DeQuantStub:
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        return x.dequantize() if isinstance(x, QTensor) else x
