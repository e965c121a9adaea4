"""Shape operations that a model's own forward code applies to recorded values (int8,
int32 or float): they move values without arithmetic, so every ONNX form records them
alike.

``view``/``reshape``/``flatten``/``squeeze``/``unsqueeze`` become ``Reshape`` (the batch
dimension copied, so the graph takes any batch), ``permute``/``transpose``
``Transpose``, indexing (integers, slices, ``None``, ``...``) ``Slice`` and, where the
rank changes, ``Reshape``; ``chunk``/``split``/``unbind`` one ``Split``; ``contiguous``,
``clone`` and the like keep the value. None of them may move the batch dimension. An
int32 value's per-channel scale follows its channel axis; an op that cuts that axis or
merges it with others is refused (dequantize first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hatcli.export.onnx_graph import Graph, TorchCall, TorchEmitter, Value

AxisMap = Callable[[int], int | None]
"""Where a dimension of the input goes in the output (``None``: not kept whole)."""


def _carry(call: TorchCall, v: Value, name: str, axis_map: AxisMap) -> Value:
    """``v``'s quantization, for the output ``name`` of a shape op."""
    int32 = v.int32_scale
    if int32 is not None:
        axis = axis_map(int32[1])
        if axis is None:
            raise call.refuse(
                "it cuts or merges the channel axis of an int32 output (a scale per channel); "
                "dequantize it first"
            )
        int32 = (int32[0], axis)
    out_scale = v.out_scale
    if out_scale is not None and out_scale[1] is not None:
        axis = axis_map(out_scale[1])
        out_scale = None if axis is None else (out_scale[0], axis)
    return Value(name, v.scale, out_scale, int32)


def _source(g: Graph, call: TorchCall) -> Value:
    if not call.args or call.args[0] is not call.source:
        raise call.refuse("a recorded activation is not its first argument")
    return g.values[id(call.source)]


def _batch_kept(call: TorchCall, out: torch.Tensor) -> None:
    src = call.source
    if out.dim() == 0 or src.dim() == 0 or out.shape[0] != src.shape[0]:
        raise call.refuse("it changes the batch dimension")


def _reshaped(g: Graph, x: str, shape: torch.Size, name: str) -> str:
    """``x`` reshaped to ``shape``, its batch dimension (first) copied from ``x``."""
    target = g.const(f"{name}.shape", np.array([0, *shape[1:]], dtype=np.int64))
    return g.node("Reshape", [x, target], name)


def unsqueezed(g: Graph, x: str, axis: int, name: str) -> str:
    """``x`` with a new dimension of size 1 at ``axis``."""
    axes = g.const(f"{name}.axes", np.array([axis], dtype=np.int64))
    return g.node("Unsqueeze", [x, axes], f"{name}.unsqueeze")


def same(g: Graph, call: TorchCall) -> None:
    """``contiguous``, ``clone``, ``detach``, ``to``/``float`` to the same dtype."""
    v = _source(g, call)
    if not isinstance(call.out, torch.Tensor) or call.out.dtype != call.source.dtype:
        raise call.refuse("it changes the dtype of a recorded value")
    g.record(call.out, v)


def reshape(g: Graph, call: TorchCall) -> None:
    v, src, out = _source(g, call), call.source, call.out
    _batch_kept(call, out)
    name = _reshaped(g, v.name, out.shape, f"{v.name}.{call.op}")

    def kept(a: int) -> int | None:
        return a if out.shape[: a + 1] == src.shape[: a + 1] else None

    g.record(out, _carry(call, v, name, kept))


def permute(g: Graph, call: TorchCall) -> None:
    v = _source(g, call)
    perm = _permutation(call)
    if perm[0] != 0:
        raise call.refuse("it moves the batch dimension")
    name = g.node("Transpose", [v.name], f"{v.name}.{call.op}", perm=perm)
    g.record(call.out, _carry(call, v, name, perm.index))


def _permutation(call: TorchCall) -> list[int]:
    """The dimension order a ``permute`` or ``transpose`` call gives."""
    rank = call.source.dim()
    if call.func in (torch.Tensor.transpose, torch.transpose):
        d0, d1 = (int(call.arg(i, name)) % rank for i, name in ((1, "dim0"), (2, "dim1")))
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    dims = list(call.args[1:]) or list(call.kwargs.get("dims", ()))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    return [int(d) % rank for d in dims]


def getitem(g: Graph, call: TorchCall) -> None:
    """Basic indexing: integers, slices, ``None`` and ``...``."""
    v, src, out = _source(g, call), call.source, call.out
    cuts: list[tuple[int, int, int, int]] = []  # (axis, start, end, step) of each Slice axis
    axis_of: dict[int, int | None] = {}
    dim = out_dim = 0
    items = _index_items(call)
    for item in items:
        if item is None:
            if dim == 0:
                raise call.refuse("it adds a dimension before the batch dimension")
            out_dim += 1
            continue
        size = src.shape[dim]
        start, stop, step = (
            (item % size, item % size + 1, 1) if isinstance(item, int) else item.indices(size)
        )
        whole = (start, stop, step) == (0, size, 1) and not isinstance(item, int)
        if not whole:
            if dim == 0:
                raise call.refuse("it changes the batch dimension")
            cuts.append((dim, start, stop, step))
        axis_of[dim] = out_dim if whole else None
        out_dim += 0 if isinstance(item, int) else 1
        dim += 1
    name = v.name
    if cuts:
        columns = [np.array(c, dtype=np.int64) for c in zip(*cuts, strict=True)]
        inputs = [g.const(f"{v.name}.{k}", c) for k, c in zip(_SLICE_INPUTS, columns, strict=True)]
        axes, starts, ends, steps = inputs
        name = g.node("Slice", [v.name, starts, ends, axes, steps], f"{v.name}.slice")
    if any(i is None or isinstance(i, int) for i in items):  # the rank changes
        name = _reshaped(g, name, out.shape, f"{v.name}.index")
    g.record(out, _carry(call, v, name, lambda a: axis_of.get(a, a - dim + out_dim)))


_SLICE_INPUTS = ("axes", "starts", "ends", "steps")


def _index_items(call: TorchCall) -> list[Any]:
    """The index items, ``...`` expanded to whole slices."""
    index = call.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    for item in items:
        if isinstance(item, bool) or not (
            item is None or item is Ellipsis or isinstance(item, slice | int)
        ):
            raise call.refuse("an index other than integers, slices, None and ...")
    if Ellipsis in items:
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (call.source.dim() - used)
    return items


def split(g: Graph, call: TorchCall) -> None:
    """``chunk``, ``split`` and ``unbind``: one ``Split``, squeezed for ``unbind``."""
    v, src = _source(g, call), call.source
    unbind = call.func in (torch.Tensor.unbind, torch.unbind)
    dim = int(call.arg(1, "dim", 0) if unbind else call.arg(2, "dim", 0)) % src.dim()
    if dim == 0:
        raise call.refuse("it splits the batch dimension")
    pieces = list(call.out)
    lengths = [1 if unbind else p.shape[dim] for p in pieces]
    sizes = g.const(f"{v.name}.split", np.array(lengths, dtype=np.int64))
    names = [f"{v.name}.{call.op}{i}" for i in range(len(pieces))]
    outs = g.nodes_out("Split", [v.name, sizes], names, axis=dim)
    for piece, name in zip(pieces, outs, strict=True):
        if unbind:
            name = _reshaped(g, name, piece.shape, f"{name}.squeeze")

        def axis_map(a: int) -> int | None:
            if a == dim:
                return None
            return a - 1 if unbind and a > dim else a

        g.record(piece, _carry(call, v, name, axis_map))


def _table(funcs: list[Callable[..., Any]], emitter: TorchEmitter) -> dict[Any, TorchEmitter]:
    return dict.fromkeys(funcs, emitter)


SHAPE_OPS: dict[Any, TorchEmitter] = {
    **_table(
        [
            torch.Tensor.contiguous,
            torch.Tensor.clone,
            torch.Tensor.detach,
            torch.Tensor.cpu,
            torch.Tensor.to,
            torch.Tensor.float,
        ],
        same,
    ),
    **_table(
        [
            torch.Tensor.view,
            torch.Tensor.reshape,
            torch.reshape,
            torch.Tensor.flatten,
            torch.flatten,
            torch.Tensor.squeeze,
            torch.squeeze,
            torch.Tensor.unsqueeze,
            torch.unsqueeze,
        ],
        reshape,
    ),
    **_table(
        [torch.Tensor.permute, torch.permute, torch.Tensor.transpose, torch.transpose], permute
    ),
    torch.Tensor.__getitem__: getitem,
    **_table(
        [
            torch.Tensor.chunk,
            torch.chunk,
            torch.Tensor.split,
            torch.split,
            torch.Tensor.unbind,
            torch.unbind,
        ],
        split,
    ),
}
"""torch function -> its emitter, for a recorded value of any kind."""
