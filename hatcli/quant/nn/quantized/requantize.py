"""Requantization: rescale integers by an integer multiplier and a rounding right shift.

A real factor ``M`` is represented as ``m / 2**shift`` with ``|m| < 2**31`` (int32) and
``1 <= shift <= 62``; the result is ``round(sum(x_i * m_i) / 2**shift)``, rounded half to
even (as torch's fake-quantize kernels round in QAT, so exact ties agree too).

How it is computed: CPUs have no vectorised int64 multiply (torch's is ~100x slower than
an int64 add), so when every ``|x_i| * |m_i|`` sum stays below 2**52 the products are
formed in float64, where they are exact integers, and scaling by ``2**-shift`` is exact
too; ``torch.round`` then rounds half to even. Otherwise the same value is computed in
int64 with shifts. Both give the same bits (tested). Layers that know a bound on their
integers (a conv: ``128 * sum|w|`` plus its bias) pass it to ``quantize_multiplier``,
which gives the multiplier as many significant bits as keep that bound: at most 31, and
for int32 accumulators never fewer than 20. Their requantization is then always the
float64 one, which is also what the exported ONNX integer graph computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN

_M_BITS = 31
_MAX_SHIFT = 62
FLOAT64_EXACT = 2**52
"""Sums of integer products below this are exact in float64 (with a bit to spare)."""


def quantize_multiplier(
    *factors: torch.Tensor, x_bounds: Sequence[int | torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Integer multipliers sharing one shift (per element) for real factors of equal shape.

    Returns ``([m_1, ...], shift)``, int64 tensors; ``m_i / 2**shift ≈ factors[i]``.
    ``x_bounds`` (one per factor, a number or a tensor broadcastable to the factors)
    bound the integers each multiplier will scale; the shift is then lowered where
    needed so that ``sum(x_bound_i * |m_i|) < FLOAT64_EXACT`` (see the module docstring).
    """
    broadcast = torch.broadcast_tensors(*factors)  # type: ignore[no-untyped-call]  # torch: untyped
    fs = [f.to(torch.float64) for f in broadcast]
    biggest = torch.stack([f.abs() for f in fs]).amax(dim=0)
    # The largest factor gets 31 significant bits; the others share its shift.
    exp = torch.frexp(biggest.clamp(min=2.0**-_MAX_SHIFT)).exponent.to(torch.int64)
    shift = (_M_BITS - exp).clamp(1, _MAX_SHIFT)
    mults = [torch.round(torch.ldexp(f, shift)).to(torch.int64) for f in fs]
    # Rounding can reach 2**31 exactly: drop one bit there.
    over = torch.stack([m.abs() >= 2**_M_BITS for m in mults]).any(dim=0) & (shift > 1)
    if bool(over.any()):
        shift = shift - over.to(torch.int64)
        mults = [torch.round(torch.ldexp(f, shift)).to(torch.int64) for f in fs]
    if any(bool((m.abs() >= 2**_M_BITS).any()) for m in mults):
        raise ValueError("requantization factor too large for an int32 multiplier")
    if x_bounds is None:
        return mults, shift
    bounds = [torch.as_tensor(b, dtype=torch.float64) for b in x_bounds]
    for _ in range(_MAX_SHIFT):
        total = sum(b * m.abs().to(torch.float64) for b, m in zip(bounds, mults, strict=True))
        over = (torch.as_tensor(total) >= FLOAT64_EXACT) & (shift > 1)
        if not bool(over.any()):
            break
        shift = shift - over.to(torch.int64)
        mults = [torch.round(torch.ldexp(f, shift)).to(torch.int64) for f in fs]
    return mults, shift


def bound_of(terms: list[tuple[torch.Tensor, torch.Tensor]], x_bounds: Sequence[int]) -> int:
    """An upper bound of ``|sum(x_i * m_i)|`` given bounds of ``|x_i|``."""
    return sum(xb * _abs_max(m) for xb, (_, m) in zip(x_bounds, terms, strict=True))


def rounding_right_shift(v: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round(v / 2**shift)``, half to even, for int64 ``v`` and ``shift >= 1``."""
    floor = torch.bitwise_right_shift(v, shift)
    half_minus_one = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1) - 1
    return torch.bitwise_right_shift(v + half_minus_one + (floor & 1), shift)


def requantize(
    terms: list[tuple[torch.Tensor, torch.Tensor]],
    shift: torch.Tensor,
    qmin: int = QUANT_MIN,
    qmax: int = QUANT_MAX,
    force_int64: bool = False,
    bound: int | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """``clamp(round(sum(x_i * m_i) / 2**shift), qmin, qmax)`` as int8.

    ``terms`` pairs integer tensors with int64 multipliers broadcastable to them;
    ``offset`` (integers, e.g. a bias) is added to the first term's integers.
    ``bound``, when the caller knows one (e.g. from the weights), bounds
    ``|sum(x_i * m_i)|`` (offset included) and saves a pass over each tensor to measure
    it; it only chooses the path, never the result.
    """
    if bound is None:
        firsts = [_abs_max(x) for x, _ in terms]
        if offset is not None:
            firsts[0] += _abs_max(offset)
        bound = bound_of(terms, firsts)
    if bound < FLOAT64_EXACT and not force_int64:
        # 1 / 2**shift: the reciprocal of a power of two is exact, and so is every
        # product and partial sum below: they are multiples of 2**-shift under 2**52.
        scale = 1.0 / torch.bitwise_left_shift(torch.ones_like(shift), shift).to(torch.float64)
        (x0, m0), rest = terms[0], terms[1:]
        f0 = m0.to(torch.float64) * scale
        # Converted first, then updated in place: an op mixing integer and float64
        # operands would convert element by element, ~40% slower.
        acc_f = x0.to(torch.float64, copy=True)
        if offset is not None:
            torch.addcmul(offset.to(torch.float64) * f0, acc_f, f0, out=acc_f)
        else:
            acc_f.mul_(f0)
        for x, m in rest:
            acc_f.addcmul_(x.to(torch.float64), m.to(torch.float64) * scale)
        assert acc_f.dtype == torch.float64
        return acc_f.round_().clamp_(qmin, qmax).to(torch.int8)
    acc = None
    for i, (x, m) in enumerate(terms):
        x64 = x.to(torch.int64)
        if i == 0 and offset is not None:
            x64 = x64 + offset.to(torch.int64)
        t = x64 * m
        acc = t if acc is None else acc + t
    assert acc is not None
    return rounding_right_shift(acc, shift).clamp_(qmin, qmax).to(torch.int8)


def _abs_max(t: torch.Tensor) -> int:
    return int(t.abs().max()) if t.numel() else 0
