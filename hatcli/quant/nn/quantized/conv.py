"""Integer conv blocks: int8 im2col x int8 weights, int32 accumulation and bias, requantized.

BN is absorbed exactly at conversion: ``with_bn`` keeps the QAT integer weights and
scales each channel's weight scale by ``s = gamma / sqrt(running_var + eps)`` (a negative
``s`` makes the multiplier negative rather than flipping int8 weights, since -(-128) does
not fit); ``with_bn_reverse_fold`` quantized ``W * s`` already. The bias becomes
``(b - mean) * s + beta`` in int32 at scale ``s_in * s_w``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from hatcli.quant.fuse_modules import bn_scale, channel_view, fold_bn_bias
from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.nn import qat
from hatcli.quant.nn.quantized import kernels
from hatcli.quant.nn.quantized.base import clamp_bounds
from hatcli.quant.nn.quantized.int_matmul import (
    FLOAT32_EXACT,
    conv_weight_mats,
    depthwise_conv2d_float32,
    float32_convolution_is_exact,
    int8_conv2d,
    int8_depthwise_conv2d,
)
from hatcli.quant.nn.quantized.requantize import requantize
from hatcli.quant.nn.quantized.weighted import (
    RequantParams,
    WeightedIntegerModule,
    integer_weight,
)
from hatcli.quant.qat_mode import QATMode
from hatcli.quant.qtensor import QTensor

_CHUNK_ROWS = 16384
_REQUANT_CHUNK = 2**17
"""Accumulator elements requantized at a time on the accumulator path (measured: whole
images of about this many values run 1.2-2x faster than a large batch in one pass)."""
ONEDNN_MIN_MACS = 2**25
ONEDNN_MIN_OUTPUTS = 2**19
"""Layers with fewer multiply-accumulates and fewer outputs than these per call take the
reference path: oneDNN compiles a kernel per shape on first use (tens to hundreds of
milliseconds) and the first use runs the self-test (~1 s), which only larger layers repay
(small models, as the tests', never pay it; ResNet18's 3x3 convs at batch 1, 38 million
multiply-adds each, run 1.9x faster on oneDNN). Both paths give the same integers."""


class Conv2d(WeightedIntegerModule):
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
        qmin: int = QUANT_MIN,
        qmax: int = QUANT_MAX,
    ) -> None:
        super().__init__(weight, weight_scale, bias, output_scale, qmin, qmax)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = groups
        self._float32_exact: bool | None = None  # depthwise weights bound sums below 2**24
        self._packed: tuple[tuple[int, int], kernels.PackedConv] | None = None
        self._fused: dict[tuple[float | bool | None, ...], kernels.FusedParams | None] = {}
        self._fastest: dict[tuple[object, ...], str] = {}  # kernels "auto": measured

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

    def _derived(self) -> dict[str, Any]:
        return {
            **super()._derived(),
            "_float32_exact": None,
            "_packed": None,
            "_fused": {},
            "_fastest": {},
        }

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

    def _finish(
        self, acc: torch.Tensor, p: RequantParams, res: torch.Tensor | None
    ) -> torch.Tensor:
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
        p = self.requant_params(s_in, s_res)
        fast = self._run_onednn(x, xi, r, p, s_in, s_res)
        out = fast if fast is not None else self._reference(xi, r, p)
        out = out.permute(0, 3, 1, 2)
        # An NCHW view of channels-last memory, which the next conv reads without a copy.
        if p.out_scale is not None:
            return QTensor(out, p.out_scale, axis=1)
        assert self.output_scale is not None
        q = QTensor(out, self.output_scale)
        return kernels.mark_nonnegative(q) if self.qmin >= 0 else q

    def _reference(
        self, xi: torch.Tensor, r: torch.Tensor | None, p: RequantParams
    ) -> torch.Tensor:
        """The channels-last output by ``torch._int_mm`` on an im2col (the reference)."""
        step = self._images_per_chunk(xi)
        # A trace must not fix the batch. (torch.jit.is_tracing is public but neither
        # re-exported nor annotated in torch's stubs.)
        if torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
            step = xi.shape[0]
        return self._finish_in_chunks(
            xi.shape[0], step, lambda i, j: self._accumulate(xi[i:j]), p, r
        )

    def _finish_in_chunks(
        self,
        images: int,
        step: int,
        accumulator: Callable[[int, int], torch.Tensor],
        p: RequantParams,
        r: torch.Tensor | None,
    ) -> torch.Tensor:
        """``_finish`` of ``accumulator(i, j)`` (images ``i`` to ``j``), ``step`` images at a
        time, joined. Images are independent: chunking never changes a result."""
        if step >= images:
            return self._finish(accumulator(0, images), p, r)
        return torch.cat(
            [
                self._finish(accumulator(i, i + step), p, None if r is None else r[i : i + step])
                for i in range(0, images, step)
            ]
        )

    # --- oneDNN ----------------------------------------------------------------------

    def _path(self, xi: torch.Tensor) -> str:
        """``kernels.active_path()`` for a large enough layer on CPU, else "reference"."""
        if not xi.is_cpu or torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
            return "reference"
        o, cin, kh, kw = self.weight.shape
        n, _, h, w = xi.shape
        out = 1
        for size, k, i in ((h, kh, 0), (w, kw, 1)):
            span = self.dilation[i] * (k - 1) + 1
            out *= max(0, (size + 2 * self.padding[i] - span) // self.stride[i] + 1)
        outputs = n * out * o
        if outputs * cin * kh * kw < ONEDNN_MIN_MACS and outputs < ONEDNN_MIN_OUTPUTS:
            return "reference"
        return kernels.active_path()

    def _packed_conv(self) -> kernels.PackedConv:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            geometry = kernels.ConvGeometry(self.stride, self.padding, self.dilation, self.groups)
            self._packed = (key, kernels.PackedConv(self.weight, geometry))
        return self._packed[1]

    def _run_onednn(
        self,
        x: torch.Tensor,
        xi: torch.Tensor,
        r: torch.Tensor | None,
        p: RequantParams,
        s_in: float,
        s_res: float | None,
    ) -> torch.Tensor | None:
        """The channels-last output by oneDNN's kernels (see ``kernels``), or ``None``
        where the reference path must run."""
        path = self._path(xi)
        if path == "reference":
            return None
        if path == "auto":
            key = (tuple(xi.shape), kernels.is_nonnegative(x), r is not None, s_in, s_res)
            path = self._fastest.get(key) or self._measure(key, (x, xi, r), p, (s_in, s_res))
            if path == "reference":
                return None
        return self._onednn_output(path, x, xi, r, p, (s_in, s_res))

    def _measure(
        self,
        key: tuple[object, ...],
        inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        p: RequantParams,
        scales: tuple[float, float | None],
    ) -> str:
        """Time both oneDNN paths on these inputs (``(x, xi, r)`` as ``_onednn_output``
        takes them; each path twice: the first call compiles oneDNN's kernels), keep
        those whose output equals the reference path's, and remember the faster for
        inputs like them ("reference" if neither: oneDNN computes some rare geometries
        wrongly, e.g. one output column at a horizontal stride of 2 or more)."""
        reference = self._reference(inputs[1], inputs[2], p)
        paths = ("accumulator",) if p.out_scale is not None else ("fused", "accumulator")
        seconds = {}
        for path in paths:
            for _ in range(2):
                start = time.perf_counter()
                out = self._onednn_output(path, *inputs, p, scales)
                seconds[path] = time.perf_counter() - start
            if out is None or not torch.equal(out, reference):
                del seconds[path]
        fastest = min(seconds, key=seconds.__getitem__) if seconds else "reference"
        self._fastest[key] = fastest
        return fastest

    def _onednn_output(
        self,
        path: str,
        x: torch.Tensor,
        xi: torch.Tensor,
        r: torch.Tensor | None,
        p: RequantParams,
        scales: tuple[float, float | None],
    ) -> torch.Tensor | None:
        """The channels-last output on ``path`` ("fused" or "accumulator"), or ``None``
        where neither can run exactly."""
        packed = self._packed_conv()
        nonnegative = kernels.is_nonnegative(x)
        fp = None
        if p.out_scale is None and path == "fused":
            fp = self._fused_params(p, packed, scales, nonnegative)
        xu, zp = kernels.as_uint8(xi, nonnegative)
        if fp is not None:
            residuals = None if r is None else kernels.residual_operands(r)
            lo, hi = packed.bracketed(xu, zp, fp, residuals)
            self._settle(lo, hi, xi, r, p, packed)
            if fp.clamp_after:
                lo.clamp_(self.qmin, self.qmax)
            return lo.permute(0, 2, 3, 1)
        if not packed.accumulator_exact:
            return None
        acc = packed.accumulate(xu, zp)
        # Requantized a few images at a time, its float64 temporaries stay in the cache.
        step = max(1, _REQUANT_CHUNK // max(1, acc[0].numel()))
        return self._finish_in_chunks(acc.shape[0], step, lambda i, j: acc[i:j], p, r)

    def _fused_params(
        self,
        p: RequantParams,
        packed: kernels.PackedConv,
        scales: tuple[float, float | None],
        nonnegative: bool,
    ) -> kernels.FusedParams | None:
        """The bracket's constants for these input scales (cached), ``None`` where the
        bracket would be too wide (the accumulator path runs instead)."""
        key = (*scales, nonnegative)
        if key not in self._fused:
            assert p.shift is not None
            comp = None if nonnegative else kernels.ZERO_POINT * packed.weight_sums
            self._fused[key] = kernels.fused_params(
                p.bias, p.mults, p.shift, self.qmin, self.qmax, comp
            )
        return self._fused[key]

    def _settle(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        xi: torch.Tensor,
        r: torch.Tensor | None,
        p: RequantParams,
        packed: kernels.PackedConv,
    ) -> None:
        """Write the exact requantized value into ``lo`` where the bracket left it open
        (``lo != hi``): the accumulator recomputed from the integers, then ``requantize``."""
        at = kernels.mismatches(lo, hi)
        if at.numel() == 0:
            return
        c = at % lo.shape[1]
        windows = packed.windows(xi.shape[2], xi.shape[3])
        acc = kernels.exact_conv_at(xi, packed.taps, packed.geometry, windows, at)
        assert p.shift is not None
        terms = [(acc, p.mults[0][c])]
        if r is not None:
            terms.append((r.permute(0, 2, 3, 1).reshape(-1).index_select(0, at), p.mults[1][c]))
        q = requantize(terms, p.shift[c], self.qmin, self.qmax, bound=p.bound, offset=p.bias[c])
        kernels.put_nhwc(lo, at, q)

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
