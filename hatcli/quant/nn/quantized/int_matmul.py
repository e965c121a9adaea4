"""Exact int8 matrix products and convolution (im2col) with int32 accumulation."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

FLOAT32_EXACT = 2**24
"""Integers below this in magnitude, and every sum of them that stays below it, are exact
in float32."""


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for int8 ``a`` [m, k] and ``b`` [k, n], exactly, as int32.

    On CPU ``torch._int_mm`` takes any shape (checked on torch 2.13; it is ~50x faster
    than an int64 matmul). CUDA requires m > 16 and k, n multiples of 8, so there the
    operands are zero-padded to fit, which leaves the product unchanged. Anywhere
    ``_int_mm`` is missing, a float64 matmul is exact too: every partial sum is an
    integer below 2**53 while k < 2**38.
    """
    m, k = a.shape
    n = b.shape[1]
    if a.is_cuda:
        pm, pk, pn = max(17 - m, 0), -k % 8, -n % 8
        if pm or pk or pn:
            a = F.pad(a, (0, pk, 0, pm))
            b = F.pad(b, (0, pn, 0, pk))
        try:
            return torch._int_mm(a, b)[:m, :n]
        except RuntimeError:
            a, b = a[:m, :k], b[:k, :n]
    elif hasattr(torch, "_int_mm"):
        return torch._int_mm(_row_major(a), _row_major(b))
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` with strides ``(columns, 1)``. A matrix of one row or column can be
    "contiguous" with other strides (``[1, n]`` with ``(1, 1)``, as a transposed column
    is), which ``torch._int_mm`` on CPU multiplies wrongly (measured on torch 2.13)."""
    if t.stride() == (t.shape[1], 1):
        return t
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def conv_weight_mats(weight: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """int8 conv weight [O, C/groups, kh, kw] -> one [kh * kw * C/groups, O/groups] matrix
    per group, rows in the (kh, kw, C) order ``int8_conv2d`` builds its columns in."""
    per_group = weight.shape[0] // groups
    w = weight.permute(0, 2, 3, 1)
    return [
        w[g * per_group : (g + 1) * per_group].reshape(per_group, -1).t().contiguous()
        for g in range(groups)
    ]


def int8_conv2d(
    x: torch.Tensor,
    weight_mats: list[torch.Tensor],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Exact int8 conv2d by im2col: ``x`` int8 [N, C, H, W]; ``weight_mats`` from
    ``conv_weight_mats``. Returns the int32 accumulator channels-last, [N, OH, OW, O].

    Columns are gathered from an NHWC copy, so each copied run is C contiguous bytes:
    ~15x faster than gathering from NCHW. Channels-last input makes that copy free.
    """
    n = x.shape[0]
    kh, kw = kernel_size
    (sh, sw), (dh, dw) = stride, dilation
    x = x.permute(0, 2, 3, 1)
    if padding != (0, 0):
        x = F.pad(x, (0, 0, padding[1], padding[1], padding[0], padding[0]))  # zero point 0
    # Window extent with dilation; keep every dh-th / dw-th element of each window.
    cols = x.unfold(1, (kh - 1) * dh + 1, sh).unfold(2, (kw - 1) * dw + 1, sw)
    if dh != 1 or dw != 1:
        cols = cols[..., ::dh, ::dw]
    oh, ow = cols.shape[1], cols.shape[2]  # cols: [N, OH, OW, C, kh, kw]
    groups = len(weight_mats)
    cin = x.shape[3] // groups
    outs = []
    for g, w in enumerate(weight_mats):
        c = cols[:, :, :, g * cin : (g + 1) * cin]
        c = c.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * cin)
        outs.append(int8_matmul(c, w))
    acc = outs[0] if groups == 1 else torch.cat(outs, dim=1)
    return acc.view(n, oh, ow, -1)


def int8_depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Exact depthwise conv (one filter per channel): ``x`` int8 [N, C, H, W], ``weight``
    int8 [C, 1, kh, kw]; int32 accumulator channels-last [N, OH, OW, C].

    One matrix product per channel would be tiny and slow; instead each kernel tap adds
    a shifted int32 slice times its per-channel weight (|sum| <= kh*kw*128*128 fits int32).
    """
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw = weight.shape[2], weight.shape[3]
    x = x.permute(0, 2, 3, 1)
    if padding != (0, 0):
        x = F.pad(x, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    x = x.to(torch.int32)
    h, w = x.shape[1], x.shape[2]
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    taps = weight[:, 0].permute(1, 2, 0).to(torch.int32)  # [kh, kw, C]
    acc = torch.zeros(x.shape[0], oh, ow, x.shape[3], dtype=torch.int32, device=x.device)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            acc.add_(x[:, rows, cols] * taps[i, j])
    return acc


def float32_convolution_is_exact() -> bool:
    """Whether oneDNN's direct fp32 convolution is available and computes in IEEE float32.

    Then a convolution of integers whose every partial sum stays below ``FLOAT32_EXACT``
    is exact whatever the summation order (oneDNN's direct algorithm, no Winograd). Any
    reduced-precision setting (torch's oneDNN fp32 precision, oneDNN's default fpmath
    mode) turns this off.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # torch: untyped
        return False
    conv = getattr(torch.backends.mkldnn, "conv", None)
    if getattr(conv, "fp32_precision", "none") not in ("none", "ieee"):
        return False
    for var in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"):
        if os.environ.get(var, "strict").strip().lower() not in ("", "strict"):
            return False
    return True


def depthwise_conv2d_float32(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """The depthwise accumulator as float32 integers, channels-last [N, OH, OW, C], by
    oneDNN's direct convolution (~20x faster than ``int8_depthwise_conv2d``). Exact only
    when ``float32_convolution_is_exact()`` and ``128 * sum|w|`` per channel is below
    ``FLOAT32_EXACT`` (always so for kernels up to 1024 taps); the caller checks both."""
    xf = x.to(torch.float32).contiguous(memory_format=torch.channels_last)
    wf = weight.to(torch.float32)
    y = torch.mkldnn_convolution(
        xf, wf, None, list(padding), list(stride), list(dilation), weight.shape[0]
    )
    return y.permute(0, 2, 3, 1)
