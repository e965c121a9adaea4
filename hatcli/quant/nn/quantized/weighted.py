"""What the integer conv and linear share: int8 weights with a scale per output channel,
a bias folded into int32, and the requantization constants of each input scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.fuse_modules import channel_view
from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier

_I32 = torch.iinfo(torch.int32)


@dataclass
class RequantParams:
    """Integer constants derived from the input scale(s) (computed once per scale)."""

    bias: torch.Tensor  # int32, at scale s_in * s_w
    mults: list[torch.Tensor]  # int64
    shift: torch.Tensor | None  # int64
    out_scale: torch.Tensor | None  # float64 per channel, when there is no output quant
    bound: int = 2**62  # an upper bound on |sum of the requantization products|


def integer_weight(fq: FakeQuantize, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, float32 per-channel scale)`` exactly as the QAT FakeQuantize rounds."""
    obs = fq.activation_post_process
    if not obs.initialized:
        obs(w)
    scale = fq.scale.to(w.device)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    w_fq = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, QUANT_MIN, QUANT_MAX)
    # w_fq is q * scale in float32; dividing recovers q exactly (|q| <= 128).
    w_int = torch.round(w_fq / channel_view(scale, w.dim())).to(torch.int8)
    return w_int, scale


class WeightedIntegerModule(IntegerModule):
    """Base of the integer modules that multiply int8 inputs by int8 weights (output
    channels first) into an int32 accumulator, add an int32 bias and requantize to int8
    with a clamp ``[qmin, qmax]``, or keep int32 when ``output_scale`` is ``None``."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor
    output_scale: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor,
        output_scale: torch.Tensor | None,
        qmin: int = QUANT_MIN,
        qmax: int = QUANT_MAX,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.int8))
        self.register_buffer("weight_scale", weight_scale.to(torch.float64))
        self.register_buffer("bias", bias.to(torch.float64))
        self.register_buffer(
            "output_scale", None if output_scale is None else output_scale.float().reshape(())
        )
        self.qmin, self.qmax = qmin, qmax
        self._cache: dict[tuple[float, ...], RequantParams] = {}

    def _derived(self) -> dict[str, Any]:
        """The attributes derived from the buffers, as they are before first use."""
        return {"_cache": {}}

    def _forget(self) -> None:
        """Drop what was derived from the buffers (they are about to change)."""
        self.__dict__.update(self._derived())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied without what was derived from the buffers (oneDNN's
        packed weights cannot be copied); the copy derives it again at first use."""
        return {**self.__dict__, **self._derived()}

    def _apply(self, fn: Any, recurse: bool = True) -> WeightedIntegerModule:  # .to(), ...
        self._forget()
        # torch's Module._apply is unannotated; it returns self.
        return cast(WeightedIntegerModule, super()._apply(fn, recurse))  # type: ignore[no-untyped-call]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._forget()
        super()._load_from_state_dict(*args, **kwargs)

    def requant_params(self, s_in: float, s_res: float | None = None) -> RequantParams:
        """The int32 bias and requantization constants for an input of scale ``s_in``
        (and an int8 residual of scale ``s_res``, added before requantizing)."""
        key = (s_in,) if s_res is None else (s_in, s_res)
        p = self._cache.get(key)
        if p is None:
            acc_scale = s_in * self.weight_scale  # float64, per output channel
            bias = torch.round(self.bias / acc_scale).clamp(_I32.min, _I32.max)
            bias = bias.to(torch.int32)
            if self.output_scale is None:
                p = RequantParams(bias, [], None, acc_scale)
            else:
                s_out = self.output_scale.double()
                factors = [acc_scale / s_out]
                # |x| <= 128 for int8 inputs, so |acc| <= 128 * sum|w| per output channel.
                per_channel = self.weight.to(torch.int64).abs().flatten(1).sum(dim=1)
                acc_bounds = 128 * per_channel + bias.to(torch.int64).abs()
                x_bounds: list[int | torch.Tensor] = [acc_bounds]
                if s_res is not None:
                    factors.append(torch.full_like(acc_scale, s_res) / s_out)
                    x_bounds.append(128)  # an int8 residual
                mults, shift = quantize_multiplier(*factors, x_bounds=x_bounds)
                total = sum(
                    torch.as_tensor(b, dtype=torch.float64) * m.abs().to(torch.float64)
                    for b, m in zip(x_bounds, mults, strict=True)
                )
                p = RequantParams(bias, mults, shift, None, int(torch.as_tensor(total).max()))
            self._cache[key] = p
        return p
