"""FakeQuantize: observe a tensor's range, then round it to the int8 grid and back (STE)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import torch
from torch import nn

from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.observer import (
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    _Observer,
)
from hatcli.quant.qat_tensor import QATTensor, plain


def fake_quantize_with_mask(
    x: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(FQ(x), inside)`` outside autograd, with torch's fake-quantize kernel arithmetic
    for float32 ``x`` (``round(x * (1 / scale))`` with a float32 reciprocal, rounding half
    to even, times ``scale``); ``inside`` marks the values that were not clamped."""
    q = torch.mul(x, torch.reciprocal(scale)).round_()
    clamped = q.clamp(quant_min, quant_max)
    inside = q == clamped
    return _positive_zero_(clamped.mul_(scale)), inside


def _positive_zero_(x: torch.Tensor) -> torch.Tensor:
    """-0.0 becomes +0.0 (torch's kernels pass through int64, which has no -0); every
    other value is unchanged."""
    return x.add_(0.0)


class _GridFakeQuantize(torch.autograd.Function):
    """``torch.fake_quantize_per_tensor_affine`` / ``per_channel_affine`` with zero point
    0 for float32, bit for bit on finite values, in vectorised elementwise ops (``scale``
    0-d, or shaped to broadcast along the channel axis): torch's fused CPU kernels are
    scalar and ~3-4x slower, and every activation and weight is fake-quantized at every
    step. Straight-through gradient inside the range (the mask torch's kernels cache),
    zero outside. (Non-finite values stay NaN/clamped here; torch's kernels cast them
    to int64, which sends NaN to the low end.)"""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        scale: torch.Tensor,
        quant_min: int,
        quant_max: int,
    ) -> torch.Tensor:
        out, inside = fake_quantize_with_mask(x, scale, quant_min, quant_max)
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            ctx.save_for_backward(inside)
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors  # type: ignore[attr-defined]
        # where, not grad * inside: the product would first copy the mask into floats.
        return torch.where(inside, grad, 0.0), None, None, None


def _float32(x: float) -> float:
    """``x`` rounded to float32 (to nearest, ties to even), as a Python float."""
    try:
        value: float = struct.unpack("<f", struct.pack("<f", x))[0]
        return value
    except OverflowError:
        return math.copysign(math.inf, x)


def _float32_step(x: float, steps: int) -> float:
    """The float32 ``steps`` representable values above positive float32 ``x``."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0] + steps
    value: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return value


def _grid_index(z: float, reciprocal: float) -> int:
    """``round(z * reciprocal)`` as float32 tensors compute it: the product of two float32
    values is exact in a Python float, so one rounding to float32 gives the float32
    product; ``round`` rounds half to even, as ``torch.round`` does."""
    return round(_float32(z * reciprocal))


def _first_rounding_above(reciprocal: float, quant_max: int) -> float:
    """The least float32 ``z > 0`` with ``round(z * reciprocal) > quant_max`` (the product
    is monotone in ``z``, so the values that stay on the grid are exactly those below)."""
    if math.isnan(reciprocal):
        return 0.0  # every product is NaN: nothing is on the grid
    if reciprocal == 0.0:
        return math.inf  # every product is 0
    z = _float32((quant_max + 0.5) / reciprocal)  # within a few floats of the answer
    if not math.isfinite(_float32(_float32_step(z, 8) * reciprocal)):
        return math.inf  # no float32 leaves the grid
    while _grid_index(z, reciprocal) > quant_max:
        z = _float32_step(z, -1)
    while _grid_index(z, reciprocal) <= quant_max:
        z = _float32_step(z, 1)
    return z


class _ClampFakeQuantize(torch.autograd.Function):
    """``FQ(clamp(z, 0, high))`` (ReLU: high ``None``; ReLU6: 6) in the passes of a
    fake quantization alone.

    Values and gradients are those of the activation followed by the fake quantization,
    bit for bit for finite ``z``, and the observer sees the activated range (the batch
    min and max of ``z``, clamped). Both maps are monotone, so
    the clamp folds into the integer clamp (``round(clamp(z, 0, 6) / s)`` is
    ``round(z / s)`` clamped to ``[0, round(6 / s)]``), the observed range is the
    clamped range of ``z``, and the gradient mask is one interval of ``z``: autograd
    keeps ``z`` (as ReLU6's own backward does) and no mask is built in the forward.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        z: torch.Tensor,
        fq: FakeQuantize,
        high: float | None,
    ) -> torch.Tensor:
        scale = fq.observe_clamped(z, 0.0, high)
        reciprocal = torch.reciprocal(scale)
        top = fq.quant_max
        if high is not None and math.isfinite(float(reciprocal)):
            top = min(top, _grid_index(high, float(reciprocal)))
        out = torch.mul(z, reciprocal).round_().clamp_(0, top)
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            ctx.save_for_backward(z, reciprocal)
            ctx.high, ctx.quant_max = high, fq.quant_max  # type: ignore[attr-defined]
        return _positive_zero_(out.mul_(scale))

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        z, reciprocal = ctx.saved_tensors  # type: ignore[attr-defined]
        # Inside: 0 < z (the activation's strict kink), z < high, and z on the grid.
        upper = _first_rounding_above(float(reciprocal), ctx.quant_max)  # type: ignore[attr-defined]
        if ctx.high is not None:  # type: ignore[attr-defined]
            upper = min(upper, ctx.high)  # type: ignore[attr-defined]
        return torch.ops.aten.hardtanh_backward(grad, z, 0.0, upper), None, None


class FakeQuantize(nn.Module):
    """Simulated int8 quantization, bit for bit as torch's fake-quantize kernels compute it.

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

    def _observing(self) -> bool:
        obs = self.activation_post_process
        return bool(self.observer_enabled) and (self.training or not obs.initialized)

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Let the observer see ``x`` (when enabled: in training, or while it has seen
        nothing); returns the scale to quantize with."""
        if self._observing():
            self.activation_post_process(x)
        return self.activation_post_process.calculate_qparams()[0].to(x.device)

    def observe_clamped(self, x: torch.Tensor, low: float, high: float | None) -> torch.Tensor:
        """``observe(x.clamp(low, high))`` without building the clamped tensor: clamping
        is monotone, so the batch's min and max of the clamped values are ``x``'s,
        clamped."""
        obs = self.activation_post_process
        if self._observing() and x.numel() > 0:
            batch_min, batch_max = obs._batch_min_max(x.detach().float())
            obs.observe_min_max(batch_min.clamp(low, high), batch_max.clamp(low, high))
        return obs.calculate_qparams()[0].to(x.device)

    def after_activation(self, z: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """``self(act(z))``, with ReLU and ReLU6 fused into the fake quantization: the
        passes of the fake quantization alone, and autograd keeps only ``z``."""
        relu, relu6 = isinstance(act, nn.ReLU), isinstance(act, nn.ReLU6)
        fusable = (
            (relu or relu6)
            and self.ch_axis is None
            and bool(self.fake_quant_enabled)
            and z.dtype == torch.float32  # the arithmetic the fusion reproduces
            and self.quant_min <= 0 <= self.quant_max  # the activation's 0 is on the grid
            # observe_clamped stands for a min-max observer's own forward only
            and type(self.activation_post_process).forward is _Observer.forward
            and type(self.activation_post_process)._batch_min_max
            is MovingAverageMinMaxObserver._batch_min_max
        )
        if not fusable:
            out: torch.Tensor = self(act(z))
            return out
        # torch's Function.apply is unannotated: it returns forward's tensor.
        y: torch.Tensor = _ClampFakeQuantize.apply(plain(z), self, 6.0 if relu6 else None)  # type: ignore[no-untyped-call]
        return QATTensor.wrap(y, self.activation_post_process.calculate_qparams()[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.observe(x)
        if not bool(self.fake_quant_enabled):
            return x
        axis = self.ch_axis
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        if axis is None:
            if x.dtype == torch.float32:
                y = _GridFakeQuantize.apply(plain(x), scale, self.quant_min, self.quant_max)  # type: ignore[no-untyped-call]
            else:  # torch's kernel, which computes in float32 for every dtype
                y = torch.fake_quantize_per_tensor_affine(
                    plain(x), scale, zero_point, self.quant_min, self.quant_max
                )
            return QATTensor.wrap(y, scale)
        if x.dtype != torch.float32:
            return torch.fake_quantize_per_channel_affine(
                x, scale, zero_point, axis, self.quant_min, self.quant_max
            )
        shape = [1] * x.dim()
        shape[axis] = -1
        out: torch.Tensor = _GridFakeQuantize.apply(  # type: ignore[no-untyped-call]
            x, scale.reshape(shape), self.quant_min, self.quant_max
        )
        return out

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
