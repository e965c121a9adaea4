"""Integer pooling. Max pooling picks int8 values and keeps the scale; average pooling
sums each window exactly and requantizes the sum by ``s_in / (n * s_out)``, with ``n``
torch's divisor for that output position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.common_types import _size_2_t
from torch.nn.modules.utils import _pair

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized import kernels
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor


def average_multipliers(
    s_in: float, divisor: torch.Tensor, s_out: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, shift)`` per element of ``divisor``, rescaling a sum of at most ``window``
    int8 values of scale ``s_in`` by ``s_in / (divisor * s_out)``."""
    factor = (s_in / divisor.to(torch.float64)) / s_out.double()
    (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX * window])
    return m, shift


def _window_sizes(
    length: int, out: int, kernel: int, stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output index along one axis, torch's window size counting padding (clipped at
    the padded end, as ``ceil_mode`` windows are) and the number of input elements."""
    start = torch.arange(out, dtype=torch.int64) * stride - padding
    end = (start + kernel).clamp(max=length + padding)
    with_pad = end - start
    inside = end.clamp(max=length) - start.clamp(min=0)
    return with_pad, inside


class AdaptiveAvgPool2d(IntegerModule):
    """torch's windows, ``floor(i * H / o)`` to ``ceil((i + 1) * H / o)``; an output size
    that divides the input size takes equal blocks directly."""

    output_scale: torch.Tensor

    def __init__(self, output_size: int | tuple[int, int], output_scale: torch.Tensor) -> None:
        super().__init__()
        self.output_size = output_size
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.AdaptiveAvgPool2d) -> AdaptiveAvgPool2d:
        return cls(mod.output_size, mod.activation_post_process.scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        h, w = xi.shape[-2:]
        size = self.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            return self._uneven(xi, s_in, oh, ow)
        kh, kw = h // oh, w // ow
        blocks = xi.reshape(*xi.shape[:-2], oh, kh, ow, kw).to(torch.int32)
        sums = blocks.sum(dim=(-3, -1), dtype=torch.int32)
        m, shift = self.multiplier(s_in, kh * kw)
        return QTensor(requantize([(sums, m)], shift), self.output_scale)

    def _uneven(self, xi: torch.Tensor, s_in: float, oh: int, ow: int) -> QTensor:
        """Windows of several sizes: sums from the integral image, a multiplier each."""
        h, w = xi.shape[-2:]
        integral = F.pad(xi.to(torch.int64).cumsum(-2).cumsum(-1), (1, 0, 1, 0))
        (sh, eh), (sw, ew) = _adaptive_bounds(h, oh), _adaptive_bounds(w, ow)

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return integral.index_select(-2, rows).index_select(-1, cols)

        sums = corner(eh, ew) - corner(sh, ew) - corner(eh, sw) + corner(sh, sw)
        counts = (eh - sh).reshape(-1, 1) * (ew - sw).reshape(1, -1)
        window = int(counts.max())
        m, shift = average_multipliers(s_in, counts, self.output_scale, window)
        return QTensor(requantize([(sums, m)], shift), self.output_scale)

    def multiplier(self, s_in: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, shift)`` rescaling a sum of ``window`` int8 values to the output scale."""
        factor = torch.as_tensor(s_in / window, dtype=torch.float64) / self.output_scale.double()
        (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX * window])
        return m, shift


def _adaptive_bounds(length: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(out, dtype=torch.int64)
    return (i * length) // out, -((-(i + 1) * length) // out)


class MaxPool2d(IntegerModule):
    """``max_pool2d`` of the int8 values (padding never wins), same scale."""

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode

    @classmethod
    def from_qat(cls, mod: qat.MaxPool2d) -> MaxPool2d:
        return cls(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        geometry = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if xi.is_cpu:
            # int8 directly (padding never wins: it pads with -128 at most); torch 2.13's
            # CPU kernel refuses channels-last int8, so NCHW.
            y = F.max_pool2d(xi.contiguous(), *geometry)
        else:  # float32 holds every int8 exactly, and torch pads with -inf on every device
            y = F.max_pool2d(xi.float(), *geometry).to(torch.int8)
        out = QTensor(y, torch.tensor(s_in, dtype=torch.float32))
        return kernels.mark_nonnegative(out) if kernels.is_nonnegative(x) else out


class AvgPool2d(IntegerModule):
    """Exact window sums (zero padding) requantized by ``s_in / (n * s_out)``, ``n``
    torch's divisor: ``divisor_override``, or the window size counting padding
    (``count_include_pad``) or not."""

    output_scale: torch.Tensor

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None,
        padding: _size_2_t,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
        output_scale: torch.Tensor,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))

    @classmethod
    def from_qat(cls, mod: qat.AvgPool2d) -> AvgPool2d:
        return cls(
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.ceil_mode,
            mod.count_include_pad,
            mod.divisor_override,
            mod.activation_post_process.scale,
        )

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        k, s, p = self.kernel_size, self.stride, self.padding
        # Sums of at most k*k int8 values are exact in float32 while k*k*128 < 2**24, in
        # any order (a divisor of 1 keeps them); float64 beyond.
        dtype = torch.float32 if k[0] * k[1] * ABS_MAX < 2**24 else torch.float64
        sums = F.avg_pool2d(xi.to(dtype), k, s, p, self.ceil_mode, True, 1)
        divisor = self.divisors(xi.shape[-2], xi.shape[-1], sums.shape[-2], sums.shape[-1])
        m, shift = average_multipliers(s_in, divisor, self.output_scale, k[0] * k[1])
        return QTensor(requantize([(sums.to(torch.int32), m)], shift), self.output_scale)

    def divisors(self, h: int, w: int, oh: int, ow: int) -> torch.Tensor:
        """torch's ``avg_pool2d`` divisor for each output position, [oh, ow] int64."""
        if self.divisor_override is not None:
            return torch.full((oh, ow), self.divisor_override, dtype=torch.int64)
        k, s, p = self.kernel_size, self.stride, self.padding
        pad_h, in_h = _window_sizes(h, oh, k[0], s[0], p[0])
        pad_w, in_w = _window_sizes(w, ow, k[1], s[1], p[1])
        rows, cols = (pad_h, pad_w) if self.count_include_pad else (in_h, in_w)
        return rows.reshape(-1, 1) * cols.reshape(1, -1)
