"""Integer conv blocks: int8 im2col x int8 weights, int32 accumulation and bias, requantized.

BN is absorbed exactly at conversion: ``with_bn`` keeps the QAT integer weights and
scales each channel's weight scale by ``s = gamma / sqrt(running_var + eps)`` (a negative
``s`` makes the multiplier negative rather than flipping int8 weights, since -(-128) does
not fit); ``with_bn_reverse_fold`` quantized ``W * s`` already. The bias becomes
``(b - mean) * s + beta`` in int32 at scale ``s_in * s_w``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hatcli.quant.fuse_modules import bn_scale, channel_view, fold_bn_bias
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized.base import IntegerModule, clamp_bounds
from hatcli.quant.nn.quantized.int_matmul import (
    FLOAT32_EXACT,
    conv_weight_mats,
    depthwise_conv2d_float32,
    float32_convolution_is_exact,
    int8_conv2d,
    int8_depthwise_conv2d,
)
from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize
from hatcli.quant.qat_mode import QATMode
from hatcli.quant.qtensor import QTensor

_I32 = torch.iinfo(torch.int32)
_CHUNK_ROWS = 16384


@dataclass
class _Params:
    """Integer constants derived from the input scale(s) (computed once per scale)."""

    bias: torch.Tensor  # int32, at scale s_in * s_w
    mults: list[torch.Tensor]  # int64
    shift: torch.Tensor | None  # int64
    out_scale: torch.Tensor | None  # float64 per channel, when there is no output quant
    bound: int = 2**62  # an upper bound on |sum of the requantization products|


def integer_weight(fq: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, float32 per-channel scale)`` exactly as the QAT FakeQuantize rounds."""
    obs = fq.activation_post_process
    if not obs.initialized:
        obs(w)
    scale = fq.scale.to(w.device)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    w_fq = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -128, 127)
    # w_fq is q * scale in float32; dividing recovers q exactly (|q| <= 128).
    w_int = torch.round(w_fq / channel_view(scale, w.dim())).to(torch.int8)
    return w_int, scale


class Conv2d(IntegerModule):
    """Integer conv with folded bias and a clamp activation; output int8 (or int32 with a
    per-channel scale when its QAT module had no output fake-quant)."""

    output_scale: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor,
        output_scale: torch.Tensor | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        qmin: int = -128,
        qmax: int = 127,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.int8))
        self.register_buffer("weight_scale", weight_scale.to(torch.float64))
        self.register_buffer("bias", bias.to(torch.float64))
        self.register_buffer(
            "output_scale", None if output_scale is None else output_scale.float().reshape(())
        )
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.qmin, self.qmax = groups, qmin, qmax
        self._cache: dict[tuple[float, ...], _Params] = {}
        self._float32_exact: bool | None = None  # depthwise weights bound sums below 2**24

    @classmethod
    def from_qat(cls, mod: qat.Conv2d) -> Conv2d:
        """Integer weights, scales and bias from a QAT conv(-BN) module, BN absorbed."""
        conv = mod.conv
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("integer conv supports numeric zero padding only")
        with torch.no_grad():
            w = conv.weight
            bias = conv.bias if conv.bias is not None else torch.zeros(w.shape[0])
            s = None
            if mod.has_bn:
                s = bn_scale(mod.bn).double()  # type: ignore[arg-type]
                bias = fold_bn_bias(conv.bias, mod.bn)  # type: ignore[arg-type]
                if mod.qat_mode is QATMode.WithBNReverseFold:
                    w = w * channel_view(s.float(), w.dim())
            w_int, w_scale = integer_weight(mod.weight_fake_quant, w)
            w_scale = w_scale.double()
            if s is not None and mod.qat_mode is QATMode.WithBN:
                w_scale = w_scale * s
            app = mod.activation_post_process
            out_scale = app.scale.detach() if app is not None else None
            qmin, qmax = clamp_bounds(mod.act, out_scale)
        geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        return cls(w_int, w_scale, bias.detach(), out_scale, *geometry, qmin, qmax)  # type: ignore[arg-type]

    def _apply(self, fn: Any, recurse: bool = True) -> Conv2d:  # .to(), .cuda(), ...
        self._cache.clear()
        self._float32_exact = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache.clear()
        self._float32_exact = None
        super()._load_from_state_dict(*args, **kwargs)

    def _params(self, s_in: float, s_res: float | None = None) -> _Params:
        key = (s_in,) if s_res is None else (s_in, s_res)
        p = self._cache.get(key)
        if p is None:
            acc_scale = s_in * self.weight_scale  # float64, per output channel
            bias = torch.round(self.bias / acc_scale).clamp(_I32.min, _I32.max)
            bias = bias.to(torch.int32)
            if self.output_scale is None:
                p = _Params(bias, [], None, acc_scale)
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
                p = _Params(bias, mults, shift, None, int(torch.as_tensor(total).max()))
            self._cache[key] = p
        return p

    def _accumulate(self, xi: torch.Tensor) -> torch.Tensor:
        """The accumulator, channels-last [N, OH, OW, O], of int8 NCHW input: int32, or
        float32 holding the same integers exactly (see ``depthwise_conv2d_float32``)."""
        w = self.weight
        if self.groups > 1 and w.shape[1] == 1 and w.shape[0] == self.groups:
            geometry = (self.stride, self.padding, self.dilation)
            if xi.is_cpu and self._depthwise_in_float32():
                return depthwise_conv2d_float32(xi, w, *geometry)
            return int8_depthwise_conv2d(xi, w, *geometry)
        mats = conv_weight_mats(w, self.groups)
        kernel = (w.shape[2], w.shape[3])
        return int8_conv2d(xi, mats, kernel, self.stride, self.padding, self.dilation)

    def _depthwise_in_float32(self) -> bool:
        if self._float32_exact is None:
            per_channel = self.weight.to(torch.int64).abs().flatten(1).sum(dim=1)
            self._float32_exact = bool((128 * per_channel).max() < FLOAT32_EXACT)
        return self._float32_exact and float32_convolution_is_exact()

    def _finish(self, acc: torch.Tensor, p: _Params, res: torch.Tensor | None) -> torch.Tensor:
        """Add the bias and requantize the channels-last accumulator (int8 NHWC), or keep it
        int32 when there is no output quantization."""
        if p.out_scale is not None:
            return acc.to(torch.int32) + p.bias
        assert p.shift is not None
        terms = [(acc, p.mults[0])]
        if res is not None:
            terms.append((res.permute(0, 2, 3, 1), p.mults[1]))
        return requantize(terms, p.shift, self.qmin, self.qmax, bound=p.bound, offset=p.bias)

    def _images_per_chunk(self, xi: torch.Tensor) -> int:
        """Whole images per ``_CHUNK_ROWS`` output positions: a large batch runs in chunks
        whose temporaries (im2col, accumulator) stay cache-sized, so cost grows linearly
        with the batch. Rows are independent: chunking never changes a result."""
        size = []
        for dim, k in ((2, self.weight.shape[2]), (3, self.weight.shape[3])):
            i = dim - 2
            span = self.dilation[i] * (k - 1) + 1
            size.append((xi.shape[dim] + 2 * self.padding[i] - span) // self.stride[i] + 1)
        return max(1, _CHUNK_ROWS // max(1, size[0] * size[1]))

    def _run(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> QTensor:
        xi, s_in = self._int8_input(x)
        r, s_res = None, None
        if residual is not None:
            r, s_res = self._int8_input(residual, "residual")
        p = self._params(s_in, s_res)
        step = self._images_per_chunk(xi)
        if step >= xi.shape[0] or torch.jit.is_tracing():  # a trace must not fix the batch
            out = self._finish(self._accumulate(xi), p, r)
        else:
            out = torch.cat(
                [
                    self._finish(
                        self._accumulate(xi[i : i + step]),
                        p,
                        None if r is None else r[i : i + step],
                    )
                    for i in range(0, xi.shape[0], step)
                ]
            )
        out = out.permute(0, 3, 1, 2)
        # An NCHW view of channels-last memory, which the next conv reads without a copy.
        if p.out_scale is not None:
            return QTensor(out, p.out_scale, axis=1)
        assert self.output_scale is not None
        return QTensor(out, self.output_scale)

    def forward(self, x: torch.Tensor) -> QTensor:
        return self._run(x)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (
            f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, clamp=[{self.qmin}, {self.qmax}]"
        )


class ConvAdd2d(Conv2d):
    """Integer conv + residual add: both terms requantized with one shift, then clamped."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> QTensor:  # type: ignore[override]
        if self.output_scale is None:
            raise ValueError("a conv with a residual add needs an output scale")
        return self._run(x, residual)
