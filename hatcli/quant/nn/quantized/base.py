"""What every integer module shares: it cannot train, and it checks its integer inputs."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.qtensor import QTensor


class IntegerModule(nn.Module):
    """Base of the integer model's modules: always in eval mode, no gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> IntegerModule:
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is part of an integer model, which cannot be trained; "
                "train the QAT model instead"
            )
        return super().train(False)

    def _check(self) -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is an integer module and cannot train")

    def _int8_input(self, x: torch.Tensor, what: str = "input") -> tuple[torch.Tensor, float]:
        """The int8 values and scale of a per-tensor QTensor argument."""
        self._check()
        if not isinstance(x, QTensor) or x.q_axis is not None or x.dtype != torch.int8:
            got = f"QTensor({x.dtype}, axis={x.q_axis})" if isinstance(x, QTensor) else type(x)
            raise TypeError(
                f"{type(self).__name__} expects an int8 per-tensor QTensor as {what}, got "
                f"{got}; is a QuantStub missing, or does an unquantized output feed it?"
            )
        return x.int_repr(), float(x.q_scale)


def clamp_bounds(act: nn.Module | None, output_scale: torch.Tensor | None) -> tuple[int, int]:
    """int8 bounds realising a fused activation as a clamp on the requantized output."""
    if act is None or isinstance(act, nn.Identity):
        return QUANT_MIN, QUANT_MAX
    if isinstance(act, nn.ReLU):
        return 0, QUANT_MAX
    if isinstance(act, nn.ReLU6):
        assert output_scale is not None, "ReLU6 needs an output scale"
        # The same float32 computation the QAT fake-quant applies to the value 6.
        six = torch.round(torch.tensor(6.0) * torch.reciprocal(output_scale.float().cpu()))
        return 0, min(QUANT_MAX, int(six))
    raise TypeError(f"no integer form for activation {type(act).__name__}")
