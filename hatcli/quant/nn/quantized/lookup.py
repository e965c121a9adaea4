"""Lookup tables for the integer ops whose input is one or two int8 values.

An int8 input has 256 values and a pair of them 65536, so a requantization (or any
function) of them is a table, built once per input scale by the exact computation itself
(``requantize``), and applying it is a lookup: the same integers as computing each element,
several times faster than float64 arithmetic on every element.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hatcli.quant.nn.quantized.kernels import tracing


def _memory_order(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``x`` flattened in memory order (a view where its layout allows) and the inverse
    that shapes a flat result like ``x``, layout included."""
    if x.is_contiguous():
        return x.reshape(-1), lambda y: y.view(x.shape)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1)
        return nhwc.reshape(-1), lambda y: y.view(nhwc.shape).permute(0, 3, 1, 2)
    return x.reshape(-1), lambda y: y.view(x.shape)


def by_uint8(table: torch.Tensor) -> torch.Tensor:
    """A 256-entry table indexed by the int8 ``q + 128`` re-indexed by ``q``'s bytes as
    uint8 (``q & 255``), so a lookup needs no offset."""
    return table[torch.arange(256) ^ 128]


def lookup(table_by_byte: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``table[q + 128]`` for int8 ``x`` (``table_by_byte`` from ``by_uint8``): int32
    indices and one ``index_select``, ~6x faster than indexing by int64 ``q + 128``."""
    if tracing():  # dtype views do not trace; int64 indexing does
        return table_by_byte.to(x.device)[x.to(torch.int64) & 255]
    flat, shape_like = _memory_order(x)
    idx = flat.view(torch.uint8).to(torch.int32)
    return shape_like(table_by_byte.to(x.device).index_select(0, idx))


def lookup_pairs(table: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``table[(a + 128) * 256 + (b + 128)]`` for int8 ``a``, ``b`` of one shape (a
    65536-entry table of every pair's result)."""
    if tracing():
        return table.to(a.device)[(a.to(torch.int64) + 128) * 256 + b.to(torch.int64) + 128]
    ia = (a.view(torch.uint8) ^ 128).to(torch.int32)
    idx = torch.add(ia.mul_(256), (b.view(torch.uint8) ^ 128).to(torch.int32))
    flat, shape_like = _memory_order(idx)
    return shape_like(table.to(a.device).index_select(0, flat))


def int8_values() -> torch.Tensor:
    """The 256 int8 values ``-128 .. 127``."""
    return torch.arange(-128, 128, dtype=torch.int8)
