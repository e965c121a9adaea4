"""Which inputs each output of a pooling, reducing or resizing op reads, as the ONNX
attributes and constants that both integer-model forms (QDQ and integer ops) build
their nodes from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.common_types import _size_2_t
from torch.nn.modules.utils import _pair

from hatcli.errors import InputError
from hatcli.export.onnx_graph import Call, Graph, Value
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.quantized.pooling import _adaptive_bounds
from hatcli.quant.nn.quantized.resize import linear_taps


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


def resize_options(call: Call[qnn.Interpolate]) -> dict[str, Any]:
    """What this call of an integer ``Interpolate`` gives ``F.interpolate``: its
    ``size`` (the call's, else the module's) or else its ``scale_factor``."""
    size = call.args[1] if len(call.args) > 1 and call.args[1] is not None else call.module.size
    if size is not None:
        return {"size": size}
    return {"scale_factor": call.module.scale_factor}


def scale_factors(call: Call[qnn.Interpolate]) -> tuple[float | None, float | None]:
    """The scale factor of each axis torch's kernel uses (``None``: from the sizes)."""
    factor = resize_options(call).get("scale_factor")
    if factor is None:
        return None, None
    fh, fw = _pair(factor)
    return float(fh), float(fw)


def resize_nearest(g: Graph, call: Call[qnn.Interpolate]) -> None:
    """Nearest resizing: a ``Gather`` of rows, then of columns, at the indices torch's
    kernel picks (found by resizing index ramps with the call's own options), so any
    size or scale factor gives torch's choice exactly. The values keep their scale."""
    v, path = g.value(call.input, call.what), call.path
    h, w = call.input.shape[-2:]
    options = resize_options(call)
    ramps = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    picked = F.interpolate(ramps[None].float(), mode="nearest", **options)[0].to(torch.int64)
    rows = g.const(f"{path}.rows", picked[0, :, 0].numpy())
    cols = g.const(f"{path}.cols", picked[1, 0, :].numpy())
    y = g.node("Gather", [v.name, rows], f"{path}.gather_rows", axis=2)
    g.record(call.out, Value(g.node("Gather", [y, cols], f"{path}.gather_cols", axis=3), v.scale))


def bilinear_taps(
    call: Call[qnn.Interpolate],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(i0, i1, w0, w1)`` of the rows, then of the columns: the integer module's own
    fixed-point taps for this call."""
    sizes = zip(call.input.shape[-2:], call.out.shape[-2:], scale_factors(call), strict=True)
    corners = bool(call.module.align_corners)
    return [linear_taps(n, o, f, corners) for n, o, f in sizes]
