"""Which inputs each output of a pooling op reads, as the ONNX attributes and constants
that both integer-model forms (QDQ and integer ops) build their nodes from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn.common_types import _size_2_t
from torch.nn.modules.utils import _pair

from hatcli.errors import InputError
from hatcli.export.onnx_graph import Call
from hatcli.quant.nn.quantized.pooling import _adaptive_bounds


def pool_attributes(
    call: Call[Any],
    kernel: _size_2_t,
    stride: _size_2_t,
    padding: _size_2_t,
    dilation: _size_2_t | None = None,
) -> dict[str, list[int]]:
    """``kernel_shape``, ``strides``, ``pads`` (and ``dilations``) giving torch's windows
    for the recorded input and output sizes, whatever ``ceil_mode``: the end pads reach
    as far as the last window does, so ONNX's floor rule gives torch's output size."""
    k, s, p = _pair(kernel), _pair(stride), _pair(padding)
    d = _pair(dilation if dilation is not None else 1)
    sizes = zip(call.input.shape[-2:], call.out.shape[-2:], strict=True)
    ends = [
        max(0, (o - 1) * s[i] + d[i] * (k[i] - 1) + 1 - n - p[i]) for i, (n, o) in enumerate(sizes)
    ]
    attrs = {"kernel_shape": list(k), "strides": list(s), "pads": [*p, *ends]}
    if dilation is not None:
        attrs["dilations"] = list(d)
    return attrs


def adaptive_windows(length: int, out: int) -> np.ndarray:
    """``[out, length]``, 1 where ``adaptive_avg_pool`` output ``i`` reads input ``j``."""
    start, end = _adaptive_bounds(length, out)
    j = torch.arange(length)
    return ((j >= start[:, None]) & (j < end[:, None])).numpy()


def reduced_axes(call: Call[Any], dim: int | tuple[int, ...]) -> list[int]:
    """The axes a reduction over ``dim`` takes, none of them the batch dimension."""
    rank = call.input.dim()
    axes = sorted({d % rank for d in ((dim,) if isinstance(dim, int) else dim)})
    if 0 in axes:
        raise InputError(f"cannot export {call.what}: it reduces the batch dimension")
    return axes
