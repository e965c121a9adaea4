"""oneDNN's int8 kernels for the integer conv and linear, used only where they are exact.

oneDNN's u8 x s8 convolution (``torch.ops.onednn.qconv_pointwise``, the kernel of PyTorch's
x86 int8 path) is several times faster than ``torch._int_mm`` on an im2col. hat uses it two
ways, both giving exactly the integers of the reference path (``int_matmul`` +
``requantize``):

**The accumulator** (int32 outputs, linear, the "accumulator" path). int8 activations
``q`` go in as uint8 ``u = q + 128`` with zero point 128 (or, where the producer clamped
them at 0, as ``u = q`` with zero point 0: no conversion and no compensation), weights as
int8 with scale 1 and zero point 0, and the output is float32 with scale 1: the raw
accumulator ``a = sum(q * w)``. oneDNN accumulates ``sum(u * w)`` in int32, which is exact
when the u8 x s8 products are not saturated in an int16 intermediate (pre-VNNI AVX2 kernels
do that; VNNI and AMX do not, see the self-test), converts it to float32 and subtracts the
zero point's compensation ``128 * sum(w)``. Both are exact when ``|sum(u * w)| < 2**24``:
``sum(u * w)`` lies between ``255 * sum(w < 0)`` and ``255 * sum(w > 0)`` per output
channel, so ``255 * max(sum(w+), sum(|w-|)) < 2**24`` (measured: past it the result is off
by one) is checked per layer from its weights, and a layer that exceeds it runs as several
convs over groups of input channels, each group's bound below ``2**24``, whose int32 sums
are added exactly. The bias is added afterwards, in the exact requantization.

**The requantized output** (int8 outputs of a conv, the "fused" path). The requantized
int8 value is ``q = clamp(rne(Y), qmin, qmax)`` with ``Y = (a + b) * M0 + r * M1``: ``b``
the int32 bias, ``M0 = m0 / 2**shift`` (and ``M1``, for a residual ``r``) the layer's exact
multipliers, ``rne`` rounding half to even. oneDNN can compute that in its epilogue, in
float32, from ``a``: ``sat(round(a * S + B [+ A * r]))`` with the weight scale ``S = fl(M0)``,
the bias ``B = fl(b * M0)`` and a sum post-op of scale ``A = fl(M1)``, clamped by a ReLU or
hardtanh post-op. That value is not exact: float32 keeps 24 bits where ``Y`` needs up to
55. So each layer runs it twice, with the bias lowered and raised by ``eps``, giving
``lo = R(Y_lo)`` and ``hi = R(Y_hi)`` with ``R`` the epilogue's rounding and clamping
(monotone, and mapping ``[k - 1/2, k + 1/2]`` onto ``k``). The int32 sum is exact (as
above); each float32 step of the epilogue (converting the sum, subtracting the
compensation, scaling, adding the bias, the sum post-op's scaling and addition), and each
of ``S``, ``B`` and ``A`` as a float32, errs by at most ``2**-24`` of a magnitude; with at
most ten such steps
and every intermediate below ``T = 131 + 2|b * M0| + 256|M1| + 128|sum(w) * M0|`` wherever
``|Y| <= 130`` (the last term: the uint8 accumulator before its compensation),
the computed values satisfy ``|Y_lo - (Y - eps)| <= 10 * 2**-24 * T + 128 * mu`` (``mu``
bounds ``|A - M1|`` over channels), which ``eps = 2**-20 * T + 256 * mu`` exceeds. So
``Y_lo < Y < Y_hi`` there, and where ``lo == hi == k`` the exact ``Y`` lies strictly inside
``R``'s interval for ``k``: ``k`` is the exact result, whatever ``R``'s tie rule. Where
``|Y| > 130`` both computed values keep ``Y``'s side beyond the int8 range (relative
error below ``2**-20``) and saturate as ``q`` does. The rare positions where ``lo != hi``
(a fraction of about ``2 * eps`` of them, ``Y`` within ``eps`` of a rounding tie) are
recomputed exactly from the int8 input and weights and requantized by ``requantize``.

Both rest on what the self-test checks at first use, on worst-case inputs (all
activations 255 as uint8 against weights of +127 and -128, uint8 sums past ``2**24`` run
in input-channel groups, exact rounding ties): int32 accumulation without saturation, the
exact float32 accumulator of every kernel kind hat uses (dense 3x3, 1x1, strided and
dilated, depthwise, grouped, a 3-channel stem, linear; zero points 128 and 0), and the
bracket on ties and on full-range layers with 31-bit multipliers (ReLU and hardtanh
clamps, a residual sum). Where an op is missing, the CPU is not x86 with oneDNN, a reduced float32
precision is set, or the self-test fails, every layer runs the reference path.
``describe()`` says which path runs, in one line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from hatcli.quant.nn.quantized.int_matmul import FLOAT32_EXACT, float32_convolution_is_exact

PATHS = ("fused", "accumulator", "reference")
"""The integer conv's paths: oneDNN's requantized output (bracketed), oneDNN's float32
accumulator with hat's requantization, and ``torch._int_mm`` on an im2col."""

MODES = ("auto", *PATHS)
"""What ``select`` and ``HAT_INT_KERNELS`` take: ``auto`` (the default) runs each large
conv on whichever of ``fused`` and ``accumulator`` measured faster for it at first use
(as ``torch.backends.cudnn.benchmark`` does: both give the same integers, so the choice
changes only the speed); a path name runs every layer on that path."""

ZERO_POINT = 128  # uint8 activations: q + 128

_lock = threading.Lock()
_selected: str | None = None  # None: HAT_INT_KERNELS, else auto
_status: tuple[bool, str] | None = None  # (self-test passed, why not)


def select(mode: str | None) -> None:
    """Run integer convs in ``mode`` (one of ``MODES``; ``None``: ``HAT_INT_KERNELS``, else
    ``auto``). A oneDNN path the machine cannot run exactly still falls back to
    ``reference``."""
    global _selected
    if mode is not None and mode not in MODES:
        raise ValueError(f"integer kernel mode must be one of {MODES}, not {mode!r}")
    _selected = mode


def active_path() -> str:
    """The mode integer convs run in now, one of ``MODES`` (the self-test runs at the
    first call)."""
    wanted = _selected or os.environ.get("HAT_INT_KERNELS", "").strip().lower() or "auto"
    if wanted not in MODES:
        wanted = "auto"
    if wanted == "reference" or not _onednn_status()[0]:
        return "reference"
    return wanted


def describe() -> str:
    """One line saying which kernels the integer model runs on, and why."""
    path = active_path()
    ok, why = _onednn_status()
    passed = f"self-test passed, {_isa()}"
    if path == "auto":
        return (
            "integer kernels: oneDNN int8 conv, exact, per layer bracketed or accumulator, "
            f"the faster ({passed})"
        )
    if path == "fused":
        return f"integer kernels: oneDNN int8 conv with bracketed requantization, exact ({passed})"
    if path == "accumulator":
        return (
            "integer kernels: oneDNN int8 conv, float32 accumulator, float64 requantization, "
            f"exact ({passed})"
        )
    reason = "set aside by kernels.select or HAT_INT_KERNELS" if ok else why
    return f"integer kernels: reference (torch._int_mm on im2col, exact; oneDNN: {reason})"


def _isa() -> str:
    """The int8 instructions the CPU reports (Linux), else torch's CPU capability."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    found = [name for flag, name in _INT8_FLAGS if flag in flags]
    if found:
        return found[0]  # the widest: AMX, else VNNI
    return f"CPU capability {torch.backends.cpu.get_cpu_capability()}"


_INT8_FLAGS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))


def _onednn_status() -> tuple[bool, str]:
    """``(usable, why not)``: oneDNN is there, in IEEE float32 (checked at every call:
    torch's and oneDNN's precision settings can change), and passed the self-test (run
    once per process)."""
    global _status
    if not float32_convolution_is_exact():
        return False, "oneDNN is unavailable or set to a reduced float32 precision"
    if _status is None:
        with _lock:
            if _status is None:
                _status = _check()
    return _status


def _check() -> tuple[bool, str]:
    ops = getattr(torch.ops, "onednn", None)
    for name in ("qconv_prepack", "qconv_pointwise", "qlinear_prepack", "qlinear_pointwise"):
        try:
            getattr(ops, name)
        except (AttributeError, RuntimeError):
            return False, f"torch.ops.onednn.{name} is missing"
    try:
        failure = self_test()
    except (RuntimeError, TypeError, ValueError) as e:  # an op refusing a shape or dtype
        return False, f"self-test raised {str(e).splitlines()[0][:120]}"
    if failure:
        return False, f"self-test failed: {failure}"
    return True, ""


def reset() -> None:
    """Forget the self-test's result (tests)."""
    global _status
    _status = None


# --- uint8 activations -----------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """int8 ``q`` as uint8 ``q + 128`` (channels-last for a 4-d tensor), a new tensor."""
    u = torch.bitwise_xor(x.view(torch.uint8), ZERO_POINT)
    if u.dim() == 4:
        u = u.contiguous(memory_format=torch.channels_last)
    return u


def as_uint8(x: torch.Tensor, nonnegative: bool) -> tuple[torch.Tensor, int]:
    """oneDNN's uint8 input and zero point for int8 ``x``: ``x`` itself (a view, zero
    point 0) when its producer clamped it at 0, else ``x + 128`` (zero point 128)."""
    if nonnegative:
        u = x.view(torch.uint8)
        if u.dim() == 4:
            u = u.contiguous(memory_format=torch.channels_last)
        return u, 0
    return to_uint8(x), ZERO_POINT


# --- conv ------------------------------------------------------------------------------


def _uint8_bound(pos: torch.Tensor, neg: torch.Tensor) -> int:
    """The largest ``|sum(u * w)|`` over uint8 ``u``: ``255 * max(sum(w+), sum(|w-|))``."""
    return int(255 * torch.maximum(pos, neg).max()) if pos.numel() else 0


def channel_groups(weight: torch.Tensor, groups: int) -> list[tuple[int, int]] | None:
    """Input-channel ranges ``[start, stop)`` of ``weight`` whose uint8 accumulators are
    each below ``2**24`` (see the module docstring): ``[(0, C)]`` when the whole layer's
    are, ``None`` for a grouped conv that would need splitting (it takes the reference
    path)."""
    w = weight.to(torch.int64)
    w = w.flatten(2) if w.dim() == 4 else w.unsqueeze(2)  # [O, C, taps]
    pos = w.clamp(min=0).sum(dim=2)  # [O, C]
    neg = (-w).clamp(min=0).sum(dim=2)
    c = pos.shape[1]
    if _uint8_bound(pos.sum(dim=1), neg.sum(dim=1)) < FLOAT32_EXACT:
        return [(0, c)]
    if groups != 1:
        return None
    ranges: list[tuple[int, int]] = []
    start = 0
    run_pos = torch.zeros(pos.shape[0], dtype=torch.int64)
    run_neg = torch.zeros_like(run_pos)
    for i in range(c):
        if _uint8_bound(run_pos + pos[:, i], run_neg + neg[:, i]) >= FLOAT32_EXACT:
            ranges.append((start, i))
            start = i
            run_pos, run_neg = torch.zeros_like(run_pos), torch.zeros_like(run_neg)
        run_pos, run_neg = run_pos + pos[:, i], run_neg + neg[:, i]
    ranges.append((start, c))
    return ranges


@dataclass
class ConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def args(self) -> tuple[list[int], list[int], list[int], int]:
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


class PackedConv:
    """A conv's int8 weights packed for oneDNN (per input zero point, on first use)."""

    def __init__(self, weight: torch.Tensor, geometry: ConvGeometry) -> None:
        self.weight = weight
        self.geometry = geometry
        o = weight.shape[0]
        self.out_channels = o
        self._zeros = torch.zeros(o, dtype=torch.int64)
        self._ones = torch.ones(o, dtype=torch.float32)
        self.ranges = channel_groups(weight, geometry.groups)
        self._packed: dict[tuple[int, int, int], torch.Tensor] = {}
        w = weight.to(torch.int64).flatten(1)
        self.weight_sums = w.sum(dim=1)  # sum(w) per output channel
        self.taps = weight.permute(0, 2, 3, 1).to(torch.int16).contiguous()  # exact_conv_at
        self._windows: dict[tuple[int, int], Windows] = {}

    def windows(self, h: int, w: int) -> Windows:
        """``exact_conv_at``'s windows for an input of ``h`` x ``w`` (made once per size)."""
        found = self._windows.get((h, w))
        if found is None:
            kernel = (self.weight.shape[2], self.weight.shape[3])
            found = self._windows[h, w] = Windows.of(h, w, kernel, self.geometry)
        return found

    def _pack(self, zero_point: int, start: int, stop: int) -> torch.Tensor:
        key = (zero_point, start, stop)
        packed = self._packed.get(key)
        if packed is None:
            w = self.weight[:, start:stop] if stop - start < self.weight.shape[1] else self.weight
            packed = torch.ops.onednn.qconv_prepack(
                w.contiguous(), self._ones, 1.0, zero_point, *self.geometry.args(), None
            )
            self._packed[key] = packed
        return packed

    @property
    def accumulator_exact(self) -> bool:
        """Whether ``accumulate`` can run: the layer, or each of its input-channel groups,
        keeps its uint8 accumulator below ``2**24``."""
        return self.ranges is not None

    def _conv(
        self,
        xu: torch.Tensor,
        zero_point: int,
        packed: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        attr: str = "none",
        scalars: list[float] | None = None,
    ) -> torch.Tensor:
        out: torch.Tensor = torch.ops.onednn.qconv_pointwise(
            xu, 1.0, zero_point, packed, scale, self._zeros, bias, *self.geometry.args(),
            1.0, 0, dtype, attr, scalars or [], "",
        )  # fmt: skip
        return out

    def accumulate(self, xu: torch.Tensor, zero_point: int) -> torch.Tensor:
        """The exact accumulator of uint8 input ``xu``, channels-last [N, OH, OW, O]:
        float32 (integers below ``2**24``) or, for a layer run in input-channel groups,
        the int32 sum of the groups' float32 accumulators."""
        assert self.ranges is not None, "check accumulator_exact first"
        if len(self.ranges) == 1:
            packed = self._pack(zero_point, *self.ranges[0])
            acc = self._conv(xu, zero_point, packed, self._ones, None, torch.float32)
            return acc.permute(0, 2, 3, 1)
        total: torch.Tensor | None = None
        for a, b in self.ranges:
            part = xu[:, a:b].contiguous(memory_format=torch.channels_last)
            packed = self._pack(zero_point, a, b)
            acc = self._conv(part, zero_point, packed, self._ones, None, torch.float32)
            total = acc.to(torch.int32) if total is None else total.add_(acc.to(torch.int32))
        assert total is not None
        return total.permute(0, 2, 3, 1)

    def bracketed(
        self,
        xu: torch.Tensor,
        zero_point: int,
        p: FusedParams,
        residuals: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: oneDNN's requantized int8 outputs [N, O, OH, OW] (channels-last
        memory) with the bias lowered and raised by ``eps`` (see the module docstring).
        ``residuals``: two copies of the int8 residual (``residual_operands``), which the
        sum post-op overwrites."""
        packed = self._pack(zero_point, 0, self.weight.shape[1])
        accums: tuple[torch.Tensor | None, ...] = residuals or (None, None)
        outs = []
        for bias, accum in zip((p.bias_lo, p.bias_hi), accums, strict=True):
            if accum is None:
                outs.append(
                    self._conv(xu, zero_point, packed, p.scale, bias, torch.int8, p.attr, p.scalars)
                )
                continue
            y = torch.ops.onednn.qconv2d_pointwise.binary(
                xu, 1.0, zero_point, packed, p.scale, self._zeros, accum, bias,
                *self.geometry.args(), 1.0, 0, torch.int8, p.residual_scale, 0, "sum", 1.0,
                p.binary_unary, [], "",
            )  # fmt: skip
            outs.append(y)
        return outs[0], outs[1]


def residual_operands(residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two channels-last copies of an int8 residual for ``PackedConv.bracketed``."""
    return (
        residual.clone(memory_format=torch.channels_last),
        residual.clone(memory_format=torch.channels_last),
    )


@dataclass
class FusedParams:
    """oneDNN's epilogue constants for one input scale (see the module docstring)."""

    scale: torch.Tensor  # float32 [O]: fl(M0)
    bias_lo: torch.Tensor  # float32 [O]: fl(b * M0 - eps)
    bias_hi: torch.Tensor  # float32 [O]: fl(b * M0 + eps)
    residual_scale: float  # fl(M1), one for every channel
    attr: str  # the clamp as a post-op: none, relu, hardtanh
    scalars: list[float]
    binary_unary: str | None  # the clamp after a residual sum (relu only), else None
    clamp_after: bool  # a clamp the residual form cannot fuse, applied afterwards


def fused_params(
    bias: torch.Tensor,
    mults: list[torch.Tensor],
    shift: torch.Tensor,
    qmin: int,
    qmax: int,
    compensation: torch.Tensor | None,
) -> FusedParams | None:
    """The bracket's constants for a layer's exact requantization (``bias`` int32,
    ``mults`` int64 ``[m0]`` or ``[m0, m1]``, ``shift`` int64; ``compensation``: the
    zero point's ``128 * sum(w)`` per output channel, ``None`` for zero point 0), or
    ``None`` where ``eps`` would not stay small (the layer then takes another path)."""
    two = torch.ldexp(torch.ones_like(shift, dtype=torch.float64), -shift)  # 2**-shift exact
    m0 = mults[0].to(torch.float64) * two
    bm = bias.to(torch.float64) * m0
    t = 131 + 2 * bm.abs()
    if compensation is not None:
        t = t + (compensation.to(torch.float64) * m0).abs()
    mu = 0.0
    residual_scale = 0.0
    if len(mults) > 1:
        m1 = mults[1].to(torch.float64) * two
        residual_scale = float(torch.tensor(float(m1.mean()), dtype=torch.float32))
        mu = float((m1 - residual_scale).abs().max()) + 2.0**-24 * abs(residual_scale)
        t = t + 256 * m1.abs()
    eps = 2.0**-20 * t + 256 * mu + 2.0**-40
    if not bool((eps < 0.25).all()) or not bool(torch.isfinite(bm).all()):
        return None
    if (qmin, qmax) == (-128, 127):
        attr, scalars = "none", list[float]()
    elif (qmin, qmax) == (0, 127):
        attr, scalars = "relu", []
    else:
        attr, scalars = "hardtanh", [float(qmin), float(qmax)]
    unary = "relu" if attr == "relu" else None
    return FusedParams(
        scale=m0.to(torch.float32),
        bias_lo=(bm - eps).to(torch.float32),
        bias_hi=(bm + eps).to(torch.float32),
        residual_scale=residual_scale,
        attr=attr,
        scalars=scalars,
        binary_unary=unary,
        clamp_after=len(mults) > 1 and attr == "hardtanh",
    )


_BYTE = torch.arange(8)


def mismatches(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Where two int8 NCHW tensors of the same channels-last layout differ: indices
    (int64 [K], ascending) into their values in NHWC order. Where the layout allows, the
    bytes are compared 8 at a time and the flags of 8 words searched as one word: the
    differences are few (about 2 ``eps`` of the positions), so only the words and bytes
    around them are looked at."""
    nhwc_lo, nhwc_hi = lo.permute(0, 2, 3, 1), hi.permute(0, 2, 3, 1)
    if nhwc_lo.is_contiguous() and nhwc_hi.is_contiguous() and nhwc_lo.numel() % 64 == 0:
        flat_lo, flat_hi = nhwc_lo.reshape(-1), nhwc_hi.reshape(-1)
        differ = torch.ne(flat_lo.view(torch.int64), flat_hi.view(torch.int64))
        blocks = differ.view(torch.uint8).view(torch.int64).nonzero().reshape(-1)
        if blocks.numel() == 0:
            return blocks
        words = (blocks.unsqueeze(1) * 8 + _BYTE).reshape(-1)
        words = words.masked_select(differ.index_select(0, words))
        cand = (words.unsqueeze(1) * 8 + _BYTE).reshape(-1)
        return cand.masked_select(flat_lo.index_select(0, cand) != flat_hi.index_select(0, cand))
    return torch.ne(nhwc_lo, nhwc_hi).reshape(-1).nonzero().reshape(-1)


def put_nhwc(t: torch.Tensor, flat: torch.Tensor, values: torch.Tensor) -> None:
    """``t``'s values at NHWC-order indices ``flat`` (as ``mismatches`` gives) become
    ``values``, in place, whatever ``t``'s layout."""
    nhwc = t.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        nhwc.reshape(-1).index_copy_(0, flat, values)
        return
    _, h, w, c = nhwc.shape
    nhwc[flat // (h * w * c), flat // (w * c) % h, flat // c % w, flat % c] = values


@dataclass
class Windows:
    """For one input size: each output position's input pixels, one per tap (their
    offsets within an image, clamped to it) and which taps fall in the zero padding."""

    pixels: torch.Tensor  # int64 [OH * OW, kh * kw]
    padding: torch.Tensor  # bool [OH * OW, kh * kw]
    any_padding: bool
    out_size: tuple[int, int]

    @classmethod
    def of(cls, h: int, w: int, kernel: tuple[int, int], geometry: ConvGeometry) -> Windows:
        (kh, kw), (sh, sw), (ph, pw) = kernel, geometry.stride, geometry.padding
        dh, dw = geometry.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        ih = (torch.arange(oh) * sh - ph).view(-1, 1, 1, 1) + (torch.arange(kh) * dh).view(
            1, 1, -1, 1
        )
        iw = (torch.arange(ow) * sw - pw).view(1, -1, 1, 1) + (torch.arange(kw) * dw).view(
            1, 1, 1, -1
        )
        padding = ((ih < 0) | (ih >= h)) | ((iw < 0) | (iw >= w))  # [oh, ow, kh, kw]
        pixels = ih.clamp(0, h - 1) * w + iw.clamp(0, w - 1)
        return cls(
            pixels.reshape(oh * ow, kh * kw),
            padding.reshape(oh * ow, kh * kw),
            bool(padding.any()),
            (oh, ow),
        )


def exact_conv_at(
    x: torch.Tensor, taps: torch.Tensor, geometry: ConvGeometry, windows: Windows, at: torch.Tensor
) -> torch.Tensor:
    """The exact int32 accumulators of int8 ``x`` [N, C, H, W] at output positions ``at``
    (indices into the output in NHWC order), ``taps`` the weights as int16
    [O, kh, kw, C/groups], ``windows`` those of ``x``'s size: each window's rows of
    channels gathered from the channels-last input, multiplied in int16
    (``|x * w| <= 2**14``) and summed in int32 (``|acc| < 2**31`` for any int8 layer of
    fewer than 2**17 taps per output)."""
    o_count, kh, kw, cin = taps.shape
    oh, ow = windows.out_size
    rows = x.permute(0, 2, 3, 1)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    big_n, h, w, c = rows.shape
    o = at % o_count
    position = at // o_count  # n * OH * OW + oh * OW + ow
    within = position % (oh * ow)
    pixel = windows.pixels.index_select(0, within) + (position // (oh * ow) * (h * w)).unsqueeze(1)
    if geometry.groups == 1:
        patch = rows.reshape(big_n * h * w, c).index_select(0, pixel.reshape(-1))
    else:
        group = o // (o_count // geometry.groups)
        grouped = rows.reshape(big_n * h * w, geometry.groups, cin)
        patch = grouped[pixel.reshape(-1), group.repeat_interleave(kh * kw)]
    patch = patch.view(-1, kh * kw, cin)
    if windows.any_padding:
        patch = patch.masked_fill(windows.padding.index_select(0, within).unsqueeze(2), 0)
    products = patch.to(torch.int16).mul_(taps.index_select(0, o).view(-1, kh * kw, cin))
    return products.sum(dim=(1, 2), dtype=torch.int32)


# --- linear ----------------------------------------------------------------------------


class PackedLinear:
    """A linear layer's int8 weights packed for oneDNN, in input-feature groups whose
    uint8 accumulators stay below ``2**24`` (see ``channel_groups``)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        o = weight.shape[0]
        self._zeros = torch.zeros(o, dtype=torch.int64)
        self._ones = torch.ones(o, dtype=torch.float32)
        ranges = channel_groups(weight, 1)
        assert ranges is not None
        self.ranges = ranges
        self._parts = [
            ((a, b), torch.ops.onednn.qlinear_prepack(weight[:, a:b].contiguous(), None))
            for a, b in ranges
        ]

    def accumulate(self, xu: torch.Tensor, zero_point: int) -> torch.Tensor:
        """The exact int32 accumulator [M, O] of uint8 input ``xu`` [M, I]."""
        total: torch.Tensor | None = None
        for (a, b), packed in self._parts:
            part = xu if len(self._parts) == 1 else xu[:, a:b].contiguous()
            acc = torch.ops.onednn.qlinear_pointwise(
                part, 1.0, zero_point, packed, self._ones, self._zeros, None, 1.0, 0,
                torch.float32, "none", [], "",
            ).to(torch.int32)  # fmt: skip
            total = acc if total is None else total.add_(acc)
        assert total is not None
        return total


# --- the self-test ---------------------------------------------------------------------


def self_test() -> str:
    """Run oneDNN's kernels on worst-case inputs against exact float64 references; ``""``
    when every case is exact, else what failed. A few small convs (~0.1 s)."""
    g = torch.Generator().manual_seed(0)
    for case in _accumulator_cases(g):
        failure = case()
        if failure:
            return failure
    for case in _bracket_cases(g):
        failure = case()
        if failure:
            return failure
    return ""


def _exact_conv(x: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    return torch.nn.functional.conv2d(
        x.double(), w.double(), None, geometry.stride, geometry.padding, geometry.dilation,
        geometry.groups,
    )  # fmt: skip


def _worst_weights(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """+127 and -128 in blocks and at random: the largest u8 x s8 pair sums."""
    w = torch.where(torch.rand(shape, generator=g) < 0.5, 127, -128)
    w[: max(1, shape[0] // 4)] = 127
    w[shape[0] // 4 : max(2, shape[0] // 2)] = -128
    return w.to(torch.int8)


def _accumulator_cases(g: torch.Generator) -> list[Callable[[], str]]:
    geometries = [
        ("dense 3x3", (2, 64, 6, 6), (16, 64, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
        ("1x1", (2, 96, 5, 5), (24, 96, 1, 1), ConvGeometry((1, 1), (0, 0), (1, 1), 1)),
        ("strided dilated", (1, 32, 9, 9), (16, 32, 3, 3), ConvGeometry((2, 2), (2, 2), (2, 2), 1)),
        ("depthwise", (2, 32, 6, 6), (32, 1, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 32)),
        ("grouped", (2, 32, 6, 6), (16, 8, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 4)),
        ("3-channel stem", (2, 3, 8, 8), (16, 3, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
        # uint8 accumulators up to 255 * 127 * 1024, past 2**24: input-channel groups
        ("split", (1, 1024, 2, 2), (8, 1024, 1, 1), ConvGeometry((1, 1), (0, 0), (1, 1), 1)),
    ]  # fmt: skip
    cases: list[Callable[[], str]] = []
    for name, xs, ws, geometry in geometries:

        def run(
            name: str = name,
            xs: tuple[int, ...] = xs,
            ws: tuple[int, ...] = ws,
            geo: ConvGeometry = geometry,
        ) -> str:
            w = _worst_weights(ws, g)
            if name == "split":
                w = torch.full(ws, 127, dtype=torch.int8)
                w[1::2] = -128
            packed = PackedConv(w, geo)
            for x in _worst_inputs(xs, g):
                for nonnegative in (False, True):
                    if nonnegative:
                        x = x.clamp(min=0)
                    xu, zp = as_uint8(x, nonnegative)
                    got = packed.accumulate(xu, zp).permute(0, 3, 1, 2).double()
                    if not torch.equal(got, _exact_conv(x, w, geo)):
                        return f"{name} accumulator inexact (zero point {zp})"
            return ""

        cases.append(run)

    def linear() -> str:
        w = _worst_weights((12, 700), g)
        packed = PackedLinear(w)
        for x in _worst_inputs((5, 700), g):
            for nonnegative in (False, True):
                if nonnegative:
                    x = x.clamp(min=0)
                got = packed.accumulate(*as_uint8(x, nonnegative)).double()
                if not torch.equal(got, x.double() @ w.double().t()):
                    return "linear accumulator inexact"
        return ""

    cases.append(linear)
    return cases


def _worst_inputs(shape: tuple[int, ...], g: torch.Generator) -> list[torch.Tensor]:
    """127 (uint8 255) but for a few 126 (odd accumulators, where a float32 rounding
    would show), and random int8 values with -128 at every fifth."""
    hi = torch.full(shape, 127, dtype=torch.int8)
    hi.view(-1)[::7] = 126
    rand = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    rand.view(-1)[::5] = -128
    return [hi, rand]


def _bracket_cases(g: torch.Generator) -> list[Callable[[], str]]:
    """Layers whose exact requantized values sit on rounding ties (small integers, a
    shift of 4: a tie at every sixteenth value) and layers of full-range integers with
    31-bit multipliers: the bracket must flag the ties and leave no position wrong."""
    specs = [
        ((2, 16, 6, 6), (16, 16, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 1), -128, 127, False),
        ((2, 16, 6, 6), (16, 1, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 16), 0, 127, False),
        ((2, 16, 6, 6), (16, 4, 1, 1), ConvGeometry((2, 2), (0, 0), (1, 1), 4), 0, 6, False),
        ((2, 16, 6, 6), (16, 16, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 1), 0, 127, True),
        ((2, 16, 6, 6), (16, 16, 1, 1), ConvGeometry((1, 1), (0, 0), (1, 1), 1), -128, 127, True),
        ((2, 16, 6, 6), (16, 16, 3, 3), ConvGeometry((1, 1), (1, 1), (2, 2), 1), 0, 20, True),
    ]  # fmt: skip
    cases: list[Callable[[], str]] = []
    for ties in (True, False):
        for xs, ws, geo, qmin, qmax, with_residual in specs:

            def run(
                xs: tuple[int, ...] = xs,
                ws: tuple[int, ...] = ws,
                geo: ConvGeometry = geo,
                clamp: tuple[int, int] = (qmin, qmax),
                with_residual: bool = with_residual,
                ties: bool = ties,
            ) -> str:
                return _bracket_case(g, xs, ws, geo, *clamp, with_residual, ties)

            cases.append(run)
    return cases


def _bracket_case(
    g: torch.Generator,
    xs: tuple[int, ...],
    ws: tuple[int, ...],
    geo: ConvGeometry,
    qmin: int,
    qmax: int,
    with_residual: bool,
    ties: bool,
) -> str:
    from hatcli.quant.nn.quantized.requantize import quantize_multiplier, requantize

    o = ws[0]
    lim = 3 if ties else 128
    x = torch.randint(-lim, lim, xs, generator=g, dtype=torch.int8)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randint(-lim, lim, ws, generator=g, dtype=torch.int8)
    acc = _exact_conv(x, w, geo).permute(0, 2, 3, 1).to(torch.int64)
    if ties:  # M0 = odd / 16
        shift = torch.full((o,), 4, dtype=torch.int64)
        m0 = torch.randint(0, 3, (o,), generator=g) * 2 + 1
        bias = torch.randint(-40, 40, (o,), generator=g)
    else:  # the accumulators' spread maps onto the int8 range
        spread = acc.double().abs().amax(dim=(0, 1, 2)).clamp(min=1)
        (m0,), shift = quantize_multiplier(100 / spread * (1 + torch.rand(o, generator=g)))
        bias = torch.randint(-(2**16), 2**16, (o,), generator=g)
    m0[::3] = -m0[::3]
    mults = [m0]
    res = None
    if with_residual:
        mults.append((torch.ones(o, dtype=torch.int64) << shift) // 2 + 1)  # M1 ~ 1/2
        oh, ow = acc.shape[1], acc.shape[2]
        res = torch.randint(-128, 128, (xs[0], o, oh, ow), generator=g, dtype=torch.int8)
        res = res.contiguous(memory_format=torch.channels_last)
    nonnegative = qmin >= 0  # as a ReLU layer's input would be
    if nonnegative:
        x = x.clamp(min=0)
        acc = _exact_conv(x, w, geo).permute(0, 2, 3, 1).to(torch.int64)
    packed = PackedConv(w, geo)
    comp = None if nonnegative else ZERO_POINT * packed.weight_sums
    fp = fused_params(bias.to(torch.int32), mults, shift, qmin, qmax, comp)
    if fp is None:
        return "bracket constants out of range"
    xu, zp = as_uint8(x, nonnegative)
    lo, hi = packed.bracketed(xu, zp, fp, None if res is None else residual_operands(res))
    if fp.clamp_after:
        lo, hi = lo.clamp(qmin, qmax), hi.clamp(qmin, qmax)
    terms = [(acc, m0)]
    if res is not None:
        terms.append((res.permute(0, 2, 3, 1).to(torch.int64), mults[1]))
    exact = requantize(terms, shift, qmin, qmax, force_int64=True, offset=bias)
    exact = exact.permute(0, 3, 1, 2)
    same = lo == hi
    if not torch.equal(lo[same], exact[same]):
        return "bracketed requantization wrong where its bounds agree"
    if not bool(((exact >= lo) & (exact <= hi)).all()):
        return "bracketed requantization does not bracket the exact value"
    if ties and bool(same.all()):
        return "bracketed requantization flagged no rounding tie"
    return ""


# --- what a producer knows about its output ----------------------------------------------

_NONNEGATIVE = "_hat_nonnegative"
_T = TypeVar("_T", bound=torch.Tensor)


def mark_nonnegative(t: _T) -> _T:
    """Record on ``t`` (an integer module's fresh output) that its values are >= 0, so a
    conv reading it passes its bytes to oneDNN as they are (zero point 0)."""
    setattr(t, _NONNEGATIVE, True)
    return t


def is_nonnegative(t: torch.Tensor) -> bool:
    """Whether ``t`` was marked by ``mark_nonnegative`` (a view or a copy is not)."""
    return bool(getattr(t, _NONNEGATIVE, False))


def tracing() -> bool:
    """Whether torch.jit.trace is recording (dtype views and data-dependent paths are
    avoided then)."""
    # torch.jit.is_tracing is public but neither re-exported nor annotated in torch's stubs
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]
