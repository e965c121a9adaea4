"""FakeQuantize: observe a tensor's range, then round it to the int8 grid and back (STE)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hatcli.quant.observer import (
    QUANT_MAX,
    QUANT_MIN,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    _Observer,
)
from hatcli.quant.qat_tensor import QATTensor, plain


def _round_to_grid(
    x: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, clamp(q))`` with ``q = round(x * (1 / scale))``: torch's fake-quantize kernel
    arithmetic (float32 reciprocal, rounding half to even), before the final ``* scale``."""
    q = torch.mul(x, torch.reciprocal(scale)).round_()
    return q, q.clamp(quant_min, quant_max)


class _MaskedStraightThrough(torch.autograd.Function):
    """Backward shared by the fake quantizations below: the gradient where the saved
    mask is true, zero elsewhere."""

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * inside, None, None, None


class _PerTensorFakeQuantize(_MaskedStraightThrough):
    """``torch.fake_quantize_per_tensor_affine`` with zero point 0, bit for bit, in
    vectorised elementwise ops: torch's fused CPU kernel is scalar and ~4x slower, and
    activations are fake-quantized at every layer. Straight-through gradient inside the
    range (the mask torch's kernel caches), zero outside."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        scale: torch.Tensor,
        quant_min: int,
        quant_max: int,
    ) -> torch.Tensor:
        q, clamped = _round_to_grid(x, scale, quant_min, quant_max)
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            ctx.save_for_backward(q == clamped)
        return clamped.mul_(scale)


class _ClampFakeQuantize(_MaskedStraightThrough):
    """``FQ(clamp(z, low, high))`` (ReLU: high ``None``; ReLU6: 0, 6) with one saved mask.

    Values and gradients are those of the activation followed by the fake quantization,
    bit for bit, but autograd keeps one byte per element (ReLU's backward would keep its
    whole float output). The observer sees the activated values, as it would unfused.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        z: torch.Tensor,
        fq: FakeQuantize,
        low: float,
        high: float | None,
    ) -> torch.Tensor:
        a = z.clamp(low, high)
        scale = fq.observe(a)
        q, clamped = _round_to_grid(a, scale, fq.quant_min, fq.quant_max)
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            # The activation's gradient mask (strict, as relu's and hardtanh's) and the
            # fake quantization's.
            inside = (q == clamped).logical_and_(z > low)
            if high is not None:
                inside.logical_and_(z < high)
            ctx.save_for_backward(inside)
        return clamped.mul_(scale)


class FakeQuantize(nn.Module):
    """Simulated int8 quantization with torch's own fake-quantize kernels.

    The enabled observer updates only in training mode, except that an observer which has
    seen nothing initialises from the first batch in either mode. Rounding is torch's
    (half to even); the gradient is straight-through inside the range, zero outside it.
    Per-tensor outputs are QATTensors, which carry the scale. The enable flags are
    buffers, so they are saved with the model.
    """

    fake_quant_enabled: torch.Tensor
    observer_enabled: torch.Tensor

    def __init__(self, observer: Callable[[], _Observer] = MovingAverageMinMaxObserver) -> None:
        super().__init__()
        self.activation_post_process = observer()
        self.quant_min = QUANT_MIN
        self.quant_max = QUANT_MAX
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))

    @property
    def ch_axis(self) -> int | None:
        """The channel axis of a per-channel FakeQuantize, ``None`` for per-tensor."""
        obs = self.activation_post_process
        return obs.ch_axis if isinstance(obs, PerChannelMinMaxObserver) else None

    @property
    def scale(self) -> torch.Tensor:
        """The current float32 scale (0-d per tensor, 1-d per channel)."""
        return self.activation_post_process.calculate_qparams()[0]

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantize:
        self.fake_quant_enabled.fill_(int(enabled))
        return self

    def disable_fake_quant(self) -> FakeQuantize:
        return self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        self.observer_enabled.fill_(int(enabled))
        return self

    def disable_observer(self) -> FakeQuantize:
        return self.enable_observer(False)

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Let the observer see ``x`` (when enabled: in training, or while it has seen
        nothing); returns the scale to quantize with."""
        obs = self.activation_post_process
        if bool(self.observer_enabled) and (self.training or not obs.initialized):
            obs(x)
        return obs.calculate_qparams()[0].to(x.device)

    def after_activation(self, z: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """``self(act(z))``, with ReLU and ReLU6 fused into the fake quantization so that
        training keeps one byte per element for both instead of ReLU's float output."""
        relu, relu6 = isinstance(act, nn.ReLU), isinstance(act, nn.ReLU6)
        fusable = (relu or relu6) and self.ch_axis is None and bool(self.fake_quant_enabled)
        if not fusable:
            return self(act(z))
        y = _ClampFakeQuantize.apply(plain(z), self, 0.0, 6.0 if relu6 else None)
        return QATTensor.wrap(y, self.activation_post_process.calculate_qparams()[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.observe(x)
        if not bool(self.fake_quant_enabled):
            return x
        axis = self.ch_axis
        if axis is None:
            y = _PerTensorFakeQuantize.apply(plain(x), scale, self.quant_min, self.quant_max)
            return QATTensor.wrap(y, scale)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            x, scale, zero_point, axis, self.quant_min, self.quant_max
        )

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={bool(self.fake_quant_enabled)}, "
            f"observer_enabled={bool(self.observer_enabled)}"
        )


def fake_quantize_bias(
    bias: torch.Tensor | None, input_scale: torch.Tensor | None, weight_scale: torch.Tensor
) -> torch.Tensor | None:
    """Round a bias to the int32 grid of ``input_scale * weight_scale`` (per channel), as the
    integer model stores it; straight-through gradient. A bias whose input scale is
    unknown (``None``: the input was not fake-quantized) is returned unchanged.

    Computed in float64, exactly as the conversion does, so both pick the same integers.
    """
    if bias is None or input_scale is None:
        return bias
    acc_scale = (input_scale.double() * weight_scale.double()).abs()
    i32 = torch.iinfo(torch.int32)
    q = torch.round(bias.detach().double() / acc_scale).clamp(i32.min, i32.max)
    return bias + ((q * acc_scale).to(bias.dtype) - bias).detach()
