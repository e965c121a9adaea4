"""Integer resizing. Nearest is torch's gather of the int8 values. Bilinear is separable
with fixed-point weights: along each axis an output takes ``w0 * x[i0] + w1 * x[i1]``
with integer weights summing to ``2**WEIGHT_BITS``, so the 2-D accumulator is an exact
integer below ``128 * 2**(2 * WEIGHT_BITS) = 2**31`` (it fits int32), requantized by
``s_in / (2**(2 * WEIGHT_BITS) * s_out)``.

Weights: ``w1 = round(lambda1 * 2**WEIGHT_BITS)`` (half to even) of torch's fraction
``lambda1`` (its source index, ``align_corners`` and scale-factor rules), ``w0`` the
rest. Rounding moves a weight by at most ``2**-(WEIGHT_BITS + 1)``; the two input values
it blends differ by at most 255 steps, so each axis moves the result by at most
``255 / 2**13 < 0.032`` input steps, both axes together ``< 0.063`` input steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hatcli.quant.int8 import ABS_MAX
from hatcli.quant.nn import qat
from hatcli.quant.nn.qat.resize import ScaleFactor, Size, check_resize, resize_repr
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qtensor import QTensor

WEIGHT_BITS = 12
"""Fraction bits of the bilinear weights (per axis)."""


def linear_taps(
    length: int, out: int, scale_factor: float | None, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i0, i1, w0, w1)`` per output index along one axis: torch's two source indices
    and its weights as integers summing to ``2**WEIGHT_BITS``."""
    i = torch.arange(out, dtype=torch.float64)
    if align_corners:
        src = i * ((length - 1) / (out - 1) if out > 1 else 0.0)
    else:
        scale = 1.0 / scale_factor if scale_factor else length / out
        src = ((i + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.floor().to(torch.int64).clamp(max=length - 1)
    i1 = (i0 + 1).clamp(max=length - 1)
    lambda1 = (src - i0).clamp(0.0, 1.0)
    w1 = torch.round(lambda1 * 2**WEIGHT_BITS).to(torch.int64)
    return i0, i1, 2**WEIGHT_BITS - w1, w1


class Interpolate(IntegerModule):
    """Nearest keeps the input's scale; bilinear requantizes to ``output_scale``."""

    output_scale: torch.Tensor | None

    def __init__(
        self,
        size: Size | None,
        scale_factor: ScaleFactor | None,
        mode: str,
        align_corners: bool | None,
        output_scale: torch.Tensor | None,
    ) -> None:
        super().__init__()
        check_resize(mode, align_corners)
        if (mode == "bilinear") != (output_scale is not None):
            raise ValueError("bilinear interpolation, and only it, has an output scale")
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.register_buffer(
            "output_scale", None if output_scale is None else output_scale.float().reshape(())
        )

    @classmethod
    def from_qat(cls, mod: qat.Interpolate) -> Interpolate:
        app = mod.activation_post_process
        out_scale = app.scale.detach() if app is not None else None
        return cls(mod.size, mod.scale_factor, mod.mode, mod.align_corners, out_scale)

    def forward(self, x: torch.Tensor, size: Size | None = None) -> QTensor:
        xi, s_in = self._int8_input(x)
        size = size if size is not None else self.size
        if self.output_scale is None:
            # float32 holds every int8 exactly; nearest only gathers.
            opts = {"size": size} if size is not None else {"scale_factor": self.scale_factor}
            y = F.interpolate(xi.float(), mode="nearest", **opts)
            return QTensor(y.to(torch.int8), torch.tensor(s_in, dtype=torch.float32))
        return self._bilinear(xi, s_in, size)

    def _bilinear(self, xi: torch.Tensor, s_in: float, size: Size | None) -> QTensor:
        assert self.output_scale is not None
        h, w = xi.shape[-2:]
        (oh, ow), (fh, fw) = self._output_size(h, w, size)
        corners = bool(self.align_corners)
        i0, i1, w0, w1 = linear_taps(h, oh, fh, corners)
        j0, j1, v0, v1 = linear_taps(w, ow, fw, corners)
        x64 = xi.to(torch.int64)
        rows = x64[..., i0, :] * w0[:, None] + x64[..., i1, :] * w1[:, None]
        acc = rows[..., j0] * v0 + rows[..., j1] * v1
        unit = 2 ** (2 * WEIGHT_BITS)
        factor = torch.as_tensor(s_in / unit, dtype=torch.float64) / self.output_scale.double()
        (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX * unit])
        return QTensor(requantize([(acc, m)], shift), self.output_scale)

    def _output_size(
        self, h: int, w: int, size: Size | None
    ) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
        """The output size and the scale factors torch's kernel uses (``None``: from the
        sizes), as ``F.interpolate`` computes them."""
        if size is not None:
            oh, ow = _pair(size)
            return (int(oh), int(ow)), (None, None)
        assert self.scale_factor is not None
        fh, fw = _pair(self.scale_factor)
        return (math.floor(float(h * fh)), math.floor(float(w * fw))), (float(fh), float(fw))

    def extra_repr(self) -> str:
        return resize_repr(self.size, self.scale_factor, self.mode, self.align_corners)


def _pair(v: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(v, Sequence):
        a, b = v
        return float(a), float(b)
    return float(v), float(v)
