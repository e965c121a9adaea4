"""The ONNX integer-op form of an integer model: the same integers, computed the same way.

Recorded like the QDQ form (see ``onnx_record``), but activations stay integers. Each
int8 value ``q`` travels as the uint8 ``q + 128`` (zero point 128, and the weights
likewise): ONNX Runtime's uint8 x uint8 ``ConvInteger`` is ~4x faster than its int8 one,
and zero points keep the products exact. ``ConvInteger`` / ``MatMulInteger`` accumulate
in int32, the int32 bias is added in int32, and requantization is hat's own: ``Cast`` to
float64, ``Mul`` by the multiplier ``m / 2**shift`` (exact, since the multipliers are
chosen so that every product stays below 2**52), ``Round`` (half to even), ``Clip``, back
to uint8. Quantizing the input repeats torch's fake-quantize kernel (float32
``x * (1 / scale)``, rounded half to even); dequantizing multiplies as ``QTensor`` does.
Other integer modules likewise: an ``Elementwise`` table is a ``Gather`` at ``q + 128``,
max pooling a ``MaxPool`` and nearest resizing a ``Gather`` of the uint8 values,
average pooling and means exact int32 window sums (``ConvInteger`` with a kernel of
ones, ``ReduceSum``, ``MatMul`` by 0/1 window matrices), bilinear resizing the module's
fixed-point blend (``Gather``, int32 ``Mul``/``Add``), a transposed conv a
``ConvInteger`` over the zero-spread input; each requantized with the module's own
multipliers. ONNX Runtime's results are therefore the integer model's, bit for bit (a
float island between a DeQuantStub and a QuantStub is float32 in both, equal up to the
last bits of its float ops).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hatcli.errors import InputError
from hatcli.export.exporter import Batch, Exporter
from hatcli.export.onnx_common import check_and_write, integer_form, require_onnx
from hatcli.export.onnx_float_ops import FLOAT_EMITTERS
from hatcli.export.onnx_graph import (
    LAYOUT_EMITTERS,
    Call,
    Emitter,
    FunctionalCall,
    FunctionalEmitter,
    Graph,
    Value,
)
from hatcli.export.onnx_record import record_graph
from hatcli.export.onnx_shape import unsqueezed
from hatcli.export.onnx_windows import (
    adaptive_windows,
    bilinear_taps,
    pool_attributes,
    reduced_axes,
    resize_nearest,
)
from hatcli.export.result import ExportResult, OutputScale
from hatcli.quant.int8 import ABS_MAX, QUANT_MAX, QUANT_MIN, UINT8_OFFSET
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.quantized.pooling import average_multipliers
from hatcli.quant.nn.quantized.requantize import quantize_multiplier
from hatcli.quant.nn.quantized.resize import WEIGHT_BITS
from hatcli.quant.nn.quantized.weighted import WeightedIntegerModule
from hatcli.quant.qtensor import QTensor


class IntegerOpsBuilder:
    """Builds the integer-op ONNX graph of an integer model by recording one forward pass."""

    def __init__(self, model: nn.Module, onnx: Any) -> None:
        self.model = model
        self.onnx = onnx

    def build(self, example: torch.Tensor) -> tuple[Any, list[OutputScale]]:
        """The ONNX model, and the output scale (tensor, axis) of each output."""
        return record_graph(self.model, self.onnx, example, EMITTERS, FUNCTIONAL)


# --- helpers ---------------------------------------------------------------------------


def _multiplier(m: torch.Tensor, shift: torch.Tensor, shape: list[int]) -> np.ndarray:
    """``m / 2**shift`` in float64 (exact: a power-of-two scaling), reshaped to broadcast."""
    scale = 1.0 / torch.bitwise_left_shift(torch.ones_like(shift), shift).to(torch.float64)
    return (m.to(torch.float64) * scale).reshape(shape).cpu().numpy()


def _cast(g: Graph, x: str, to: int, name: str) -> str:
    return g.node("Cast", [x], f"{name}.cast", to=to)


def _centred(g: Graph, x: str, to: int, name: str) -> str:
    """A uint8 activation as its int8 value ``q``, in type ``to`` (exact)."""
    dtype = np.float64 if to == g.types.DOUBLE else np.int32
    zp = g.const(f"{name}.zero_point", np.array(UINT8_OFFSET, dtype=dtype))
    return g.node("Sub", [_cast(g, x, to, name), zp], f"{name}.centred")


def _to_uint8(g: Graph, ints: str, dtype: type, qmin: int, qmax: int, path: str) -> str:
    """Integer values (in a float type) clamped to [qmin, qmax], as uint8 ``q + 128``."""
    zp = g.const(f"{path}.zero_point", np.array(UINT8_OFFSET, dtype=dtype))
    lo = g.const(f"{path}.qmin", np.array(qmin + UINT8_OFFSET, dtype=dtype))
    hi = g.const(f"{path}.qmax", np.array(qmax + UINT8_OFFSET, dtype=dtype))
    shifted = g.node("Add", [ints, zp], f"{path}.shift")
    clipped = g.node("Clip", [shifted, lo, hi], f"{path}.clip")
    return _cast(g, clipped, g.types.UINT8, f"{path}.uint8")


def _requantize(
    g: Graph, terms: list[tuple[str, np.ndarray, bool]], qmin: int, qmax: int, path: str
) -> str:
    """``clamp(round(sum(x_i * M_i)), qmin, qmax)`` as ``requantize`` computes it, as a
    uint8 activation. A term flagged ``True`` is a uint8 activation, the others int32."""
    acc = None
    for i, (x, mult, is_activation) in enumerate(terms):
        name = f"{path}.x{i}"
        if is_activation:
            xd = _centred(g, x, g.types.DOUBLE, name)
        else:
            xd = _cast(g, x, g.types.DOUBLE, name)
        t = g.node("Mul", [xd, g.const(f"{path}.multiplier{i}", mult)], f"{path}.mul{i}")
        acc = t if acc is None else g.node("Add", [acc, t], f"{path}.sum")
    assert acc is not None
    rounded = g.node("Round", [acc], f"{path}.round")
    return _to_uint8(g, rounded, np.float64, qmin, qmax, path)


def _int8_output(g: Graph, call: Call[Any] | FunctionalCall, q: str) -> None:
    """Record ``q`` (uint8) as the output, at the module's output scale."""
    g.record(call.out, Value(q, float(call.module.output_scale)))


def _activation(g: Graph, t: Any, what: str) -> Value:
    v = g.value(t, what)
    if v.scale is None or v.int32_scale is not None:
        raise InputError(f"{what} expects an int8 activation; its input is not one")
    return v


def _as_uint8(t: torch.Tensor) -> np.ndarray:
    """int8 values ``q`` as the uint8 ``q + 128``."""
    return (t.to(torch.int16) + UINT8_OFFSET).to(torch.uint8).cpu().numpy()


def _zero_point(g: Graph) -> str:
    """The shared uint8 zero point, 128."""
    return g.once("zero_uint8", lambda: g.const("zero_uint8", np.array(UINT8_OFFSET, np.uint8)))


def _weight(g: Graph, path: str, w: torch.Tensor) -> tuple[str, str]:
    """An int8 weight as uint8 ``w + 128`` and its zero point."""
    return g.const(f"{path}.weight", _as_uint8(w)), _zero_point(g)


def _accumulated(
    g: Graph,
    call: Call[WeightedIntegerModule],
    acc: str,
    shape: list[int],
    scales: tuple[float, ...],
    residual: Value | None = None,
) -> None:
    """Add the int32 bias, then requantize (or keep int32 with a per-channel scale);
    the integers are the module's own (its ``requant_params`` at these input scales)."""
    mod, path, out = call.module, call.path, call.out
    p = mod.requant_params(*scales)
    bias = g.const(f"{path}.bias", p.bias.reshape(shape).cpu().numpy().astype(np.int32))
    acc = g.node("Add", [acc, bias], f"{path}.bias_add")
    if p.out_scale is not None:
        assert isinstance(out, QTensor) and out.q_axis is not None
        g.record(out, Value(acc, None, int32_scale=(p.out_scale.clone(), out.q_axis)))
        return
    assert p.shift is not None
    terms = [(acc, _multiplier(p.mults[0], p.shift, shape), False)]
    if residual is not None:
        terms.append((residual.name, _multiplier(p.mults[1], p.shift, shape), True))
    q = _requantize(g, terms, mod.qmin, mod.qmax, path)
    g.record(out, Value(q, float(mod.output_scale)))  # type: ignore[arg-type]


def _conv_node(g: Graph, call: Call[qnn.Conv2d], v: Value) -> str:
    mod, path = call.module, call.path
    w, wz = _weight(g, path, mod.weight)
    kh, kw = mod.weight.shape[2:]
    ph, pw = mod.padding
    return g.node(
        "ConvInteger",
        [v.name, w, _zero_point(g), wz],
        f"{path}.conv",
        kernel_shape=[kh, kw],
        strides=list(mod.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(mod.dilation),
        group=mod.groups,
    )


# --- emitters --------------------------------------------------------------------------


def quant_stub(g: Graph, call: Call[qnn.QuantStub]) -> None:
    """torch's fake-quantize kernel; a constant's (e.g. a layer scale a quantized mul
    reads) values are an initializer."""
    path = call.path
    scale = np.float32(call.module.scale.item())
    if not g.recorded(call.input):
        ints = g.const(f"{path}.value", _as_uint8(call.out.int_repr()))
        g.record(call.out, Value(ints, float(scale)))
        return
    v = g.value(call.input, call.what)
    if v.scale is not None:
        raise InputError(f"cannot export {path}: its input is quantized already")
    inv = g.const(f"{path}.inv_scale", np.array(np.float32(1.0) / scale, dtype=np.float32))
    y = g.node("Round", [g.node("Mul", [v.name, inv], f"{path}.mul")], f"{path}.round")
    g.record(call.out, Value(_to_uint8(g, y, np.float32, QUANT_MIN, QUANT_MAX, path), float(scale)))


def dequant_stub(g: Graph, call: Call[qnn.DeQuantStub]) -> None:
    path, out = call.path, call.out
    v = g.value(call.input, call.what)
    if v.int32_scale is not None:  # int32 with a per-channel float64 scale
        scale, axis = v.int32_scale
        shape = [1] * out.dim()
        shape[axis] = -1
        s = g.const(f"{path}.scale", scale.double().reshape(shape).cpu().numpy())
        ints = _cast(g, v.name, g.types.DOUBLE, path)
        agreement_scale: OutputScale = (scale.clone(), axis)
    elif v.scale is not None:
        s = g.const(f"{path}.scale", np.array(v.scale, dtype=np.float64))
        ints = _centred(g, v.name, g.types.DOUBLE, path)
        agreement_scale = (torch.tensor(v.scale), None)
    else:
        g.record(out, v)
        return
    y = _cast(g, g.node("Mul", [ints, s], f"{path}.mul"), g.types.FLOAT, f"{path}.f")
    g.record(out, Value(y, None, agreement_scale))


def conv(g: Graph, call: Call[qnn.Conv2d]) -> None:
    v = _activation(g, call.input, call.what)
    _accumulated(g, call, _conv_node(g, call, v), [1, -1, 1, 1], (v.scale,))  # type: ignore[arg-type]


def conv_add(g: Graph, call: Call[qnn.ConvAdd2d]) -> None:
    v = _activation(g, call.input, call.what)
    acc = _conv_node(g, call, v)
    residual = _activation(g, call.args[1], f"{call.path} residual")
    scales = (v.scale, residual.scale)
    _accumulated(g, call, acc, [1, -1, 1, 1], scales, residual)  # type: ignore[arg-type]


def linear(g: Graph, call: Call[qnn.Linear]) -> None:
    path = call.path
    v = _activation(g, call.input, call.what)
    w, wz = _weight(g, path, call.module.weight.t().contiguous())
    acc = g.node("MatMulInteger", [v.name, w, _zero_point(g), wz], f"{path}.matmul")
    _accumulated(g, call, acc, [-1], (v.scale,))  # type: ignore[arg-type]


def relu(g: Graph, call: Call[qnn.ReLU]) -> None:
    path = call.path
    v = _activation(g, call.input, call.what)
    lo = g.const(f"{path}.min", np.array(UINT8_OFFSET, dtype=np.uint8))
    hi = g.const(f"{path}.max", np.array(QUANT_MAX + UINT8_OFFSET, dtype=np.uint8))
    g.record(call.out, Value(g.node("Clip", [v.name, lo, hi], f"{path}.relu"), v.scale))


def relu6(g: Graph, call: Call[qnn.ReLU6]) -> None:
    mod = call.module
    v = _activation(g, call.input, call.what)
    m, shift = mod.multiplier(v.scale)  # type: ignore[arg-type]
    terms = [(v.name, _multiplier(m, shift, []), True)]
    _int8_output(g, call, _requantize(g, terms, mod.qmin, mod.qmax, call.path))


def pool(g: Graph, call: Call[qnn.AdaptiveAvgPool2d]) -> None:
    """Exact window sums in int32, requantized by ``s_in / (n * s_out)``."""
    v = _activation(g, call.input, call.what)
    (h, w), (oh, ow) = call.input.shape[-2:], call.out.shape[-2:]
    ints = _centred(g, v.name, g.types.INT32, call.path)
    sums = _window_sums if h % oh or w % ow else _block_sums
    acc, mult = sums(g, call, ints, v.scale)  # type: ignore[arg-type]
    _int8_output(g, call, _requantize(g, [(acc, mult, False)], QUANT_MIN, QUANT_MAX, call.path))


def _block_sums(
    g: Graph, call: Call[qnn.AdaptiveAvgPool2d], ints: str, s_in: float
) -> tuple[str, np.ndarray]:
    """Equal blocks: ``ReduceSum`` over each, and the module's one multiplier."""
    path = call.path
    (c, h, w), (oh, ow) = call.input.shape[1:], call.out.shape[-2:]
    kh, kw = h // oh, w // ow
    blocks = g.const(f"{path}.blocks", np.array([0, c, oh, kh, ow, kw], dtype=np.int64))
    axes = g.const(f"{path}.axes", np.array([3, 5], dtype=np.int64))
    reshaped = g.node("Reshape", [ints, blocks], f"{path}.reshape")
    m, shift = call.module.multiplier(s_in, kh * kw)
    sums = g.node("ReduceSum", [reshaped, axes], f"{path}.sum", keepdims=0)
    return sums, _multiplier(m, shift, [])


def _window_sums(
    g: Graph, call: Call[qnn.AdaptiveAvgPool2d], ints: str, s_in: float
) -> tuple[str, np.ndarray]:
    """Windows of several sizes: ``rows @ x @ cols^T`` with 0/1 matrices (exact in
    int32), and a multiplier per output position."""
    path = call.path
    (h, w), (oh, ow) = call.input.shape[-2:], call.out.shape[-2:]
    rows, cols = adaptive_windows(h, oh), adaptive_windows(w, ow)
    r = g.const(f"{path}.rows", rows.astype(np.int32))
    c = g.const(f"{path}.cols", cols.T.astype(np.int32))
    sums = g.node("MatMul", [g.node("MatMul", [r, ints], f"{path}.row_sums"), c], f"{path}.sums")
    counts = torch.from_numpy(rows.sum(1)[:, None] * cols.sum(1)[None, :])
    m, shift = average_multipliers(s_in, counts, call.module.output_scale, int(counts.max()))
    return sums, _multiplier(m, shift, [oh, ow])


def avg_pool(g: Graph, call: Call[qnn.AvgPool2d]) -> None:
    """Window sums by ``ConvInteger`` with a kernel of ones per channel (its padding is
    the zero point, so padding adds 0), requantized by ``s_in / (n * s_out)`` with ``n``
    torch's divisor of each output position."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    channels = call.input.shape[1]
    ones = g.const(f"{path}.ones", np.ones((channels, 1, *mod.kernel_size), dtype=np.uint8))
    attrs = pool_attributes(call, mod.kernel_size, mod.stride, mod.padding)
    inputs = [v.name, ones, _zero_point(g)]
    sums = g.node("ConvInteger", inputs, f"{path}.sum", group=channels, **attrs)
    divisor = mod.divisors(*call.input.shape[-2:], *call.out.shape[-2:])
    window = mod.kernel_size[0] * mod.kernel_size[1]
    m, shift = average_multipliers(v.scale, divisor, mod.output_scale, window)  # type: ignore[arg-type]
    terms = [(sums, _multiplier(m, shift, list(divisor.shape)), False)]
    _int8_output(g, call, _requantize(g, terms, QUANT_MIN, QUANT_MAX, path))


def max_pool(g: Graph, call: Call[qnn.MaxPool2d]) -> None:
    """``MaxPool`` of the uint8 values (order-preserving, padding never wins)."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    attrs = pool_attributes(call, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    g.record(call.out, Value(g.node("MaxPool", [v.name], f"{path}.pool", **attrs), v.scale))


def mean(g: Graph, call: Call[qnn.Mean]) -> None:
    """The exact int32 ``ReduceSum``, requantized by ``s_in / (n * s_out)``."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    axes = reduced_axes(call, mod.dim)
    n = math.prod(call.input.shape[a] for a in axes)
    ints = _centred(g, v.name, g.types.INT32, path)
    axes_name = g.const(f"{path}.axes", np.array(axes, dtype=np.int64))
    sums = g.node("ReduceSum", [ints, axes_name], f"{path}.sum", keepdims=int(mod.keepdim))
    m, shift = average_multipliers(v.scale, torch.tensor(n), mod.output_scale, n)  # type: ignore[arg-type]
    terms = [(sums, _multiplier(m, shift, []), False)]
    _int8_output(g, call, _requantize(g, terms, QUANT_MIN, QUANT_MAX, path))


def elementwise(g: Graph, call: Call[qnn.Elementwise]) -> None:
    """``Gather`` on the module's 256-entry table (as uint8) at the uint8 input ``q + 128``."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    table = g.const(f"{path}.table", _as_uint8(mod.table(v.scale)))  # type: ignore[arg-type]
    index = _cast(g, v.name, g.types.INT32, path)
    _int8_output(g, call, g.node("Gather", [table, index], f"{path}.lookup"))


def interpolate(g: Graph, call: Call[qnn.Interpolate]) -> None:
    if call.module.output_scale is None:
        resize_nearest(g, call)
        return
    _bilinear(g, call)


def _bilinear(g: Graph, call: Call[qnn.Interpolate]) -> None:
    """The module's fixed-point blend of rows, then of columns (``2**WEIGHT_BITS``
    weights, exact in int32), requantized by ``s_in / (2**(2 * WEIGHT_BITS) * s_out)``."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    (i0, i1, w0, w1), (j0, j1, v0, v1) = bilinear_taps(call)
    x = _centred(g, v.name, g.types.INT32, path)
    rows = _blend(g, x, 2, (i0, i1), (w0.reshape(-1, 1), w1.reshape(-1, 1)), f"{path}.rows")
    acc = _blend(g, rows, 3, (j0, j1), (v0, v1), f"{path}.cols")
    unit = 2 ** (2 * WEIGHT_BITS)
    assert mod.output_scale is not None and v.scale is not None
    factor = torch.as_tensor(v.scale / unit, dtype=torch.float64) / mod.output_scale.double()
    (m,), shift = quantize_multiplier(factor, x_bounds=[ABS_MAX * unit])
    terms = [(acc, _multiplier(m, shift, []), False)]
    _int8_output(g, call, _requantize(g, terms, QUANT_MIN, QUANT_MAX, path))


def _blend(
    g: Graph,
    x: str,
    axis: int,
    taps: tuple[torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor],
    name: str,
) -> str:
    """``x[taps[0]] * weights[0] + x[taps[1]] * weights[1]`` along ``axis``, in int32."""
    terms = []
    for k, (index, weight) in enumerate(zip(taps, weights, strict=True)):
        i = g.const(f"{name}.index{k}", index.numpy())
        picked = g.node("Gather", [x, i], f"{name}.gather{k}", axis=axis)
        wk = g.const(f"{name}.weight{k}", weight.to(torch.int32).numpy())
        terms.append(g.node("Mul", [picked, wk], f"{name}.weighted{k}"))
    return g.node("Add", terms, f"{name}.sum")


def conv_transpose(g: Graph, call: Call[qnn.ConvTranspose2d]) -> None:
    """A stride-1 ``ConvInteger`` with the spatially flipped weights over the input with
    ``stride - 1`` zeros (the zero point) after each row and column: the transposed
    convolution's own sums, exact in int32; then bias and requantization as a conv's."""
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    x = _zeros_inserted(g, v.name, call.input.shape[1:], mod.stride, path)
    w, wz = _weight(g, path, mod.weight.flip(2, 3))
    begin, end = [], []
    for i, k in enumerate(mod.weight.shape[2:]):
        reach = mod.dilation[i] * (k - 1) - mod.padding[i]
        begin.append(reach)
        end.append(reach + mod.output_padding[i] - (mod.stride[i] - 1))
    acc = g.node(
        "ConvInteger",
        [x, w, _zero_point(g), wz],
        f"{path}.conv",
        kernel_shape=list(mod.weight.shape[2:]),
        pads=[max(0, p) for p in (*begin, *end)],
        dilations=list(mod.dilation),
        group=mod.groups,
    )
    acc = _cropped(g, acc, call.out.shape[2:], begin, end, path)
    _accumulated(g, call, acc, [1, -1, 1, 1], (v.scale,))  # type: ignore[arg-type]


def _zeros_inserted(g: Graph, x: str, chw: torch.Size, stride: tuple[int, int], path: str) -> str:
    """``x`` [N, C, H, W] with ``s - 1`` zero points after each row and column:
    [N, C, H * sh, W * sw] (unchanged for stride 1)."""
    (c, h, w), (sh, sw) = chw, stride
    if (sh, sw) == (1, 1):
        return x
    cells = g.const(f"{path}.cells", np.array([0, c, h, 1, w, 1], dtype=np.int64))
    pads = g.const(f"{path}.gaps", np.array([0] * 9 + [sh - 1, 0, sw - 1], dtype=np.int64))
    spread = g.node("Reshape", [x, cells], f"{path}.cells")
    spread = g.node("Pad", [spread, pads, _zero_point(g)], f"{path}.gaps")
    shape = g.const(f"{path}.spread", np.array([0, c, h * sh, w * sw], dtype=np.int64))
    return g.node("Reshape", [spread, shape], f"{path}.spread")


def _cropped(
    g: Graph, acc: str, size: torch.Size, begin: list[int], end: list[int], path: str
) -> str:
    """``acc`` without the rows and columns a negative pad (``begin``/``end``) cuts."""
    cut_begin, cut_end = [max(0, -p) for p in begin], [max(0, -p) for p in end]
    if not any(cut_begin) and not any(cut_end):
        return acc
    full = [n + b + e for n, b, e in zip(size, cut_begin, cut_end, strict=True)]
    columns = {
        "starts": cut_begin,
        "ends": [n - e for n, e in zip(full, cut_end, strict=True)],
        "axes": [2, 3],
    }
    inputs = [g.const(f"{path}.crop_{k}", np.array(c, dtype=np.int64)) for k, c in columns.items()]
    return g.node("Slice", [acc, *inputs], f"{path}.crop")


def _functional_sum(sign: int) -> FunctionalEmitter:
    """``add`` (``sign`` 1) or ``sub`` (-1): both terms requantized with one shift."""

    def emit(g: Graph, call: FunctionalCall) -> None:
        where = call.where
        a, b = (_activation(g, t, where) for t in call.tensors)
        mults, shift = call.module.multipliers([a.scale, b.scale])
        terms = [
            (a.name, _multiplier(mults[0], shift, []), True),
            (b.name, _multiplier(sign * mults[1], shift, []), True),
        ]
        _int8_output(g, call, _requantize(g, terms, QUANT_MIN, QUANT_MAX, where))

    return emit


def functional_mul(g: Graph, call: FunctionalCall) -> None:
    where = call.where
    a, b = (_activation(g, t, where) for t in call.tensors)
    xa = _centred(g, a.name, g.types.INT32, f"{where}.a")
    xb = _centred(g, b.name, g.types.INT32, f"{where}.b")
    prod = g.node("Mul", [xa, xb], f"{where}.product")
    (m,), shift = call.module.multipliers([a.scale * b.scale], ABS_MAX * ABS_MAX)  # type: ignore[operator]
    terms = [(prod, _multiplier(m, shift, []), False)]
    _int8_output(g, call, _requantize(g, terms, QUANT_MIN, QUANT_MAX, where))


def _functional_join(stack: bool) -> FunctionalEmitter:
    """``cat`` or ``stack``: each input rescaled to the output scale, then ``Concat``
    (of the inputs unsqueezed, for ``stack``)."""

    def emit(g: Graph, call: FunctionalCall) -> None:
        where = call.where
        axis = call.dim % call.out.dim()
        parts = []
        for i, t in enumerate(call.tensors):
            v = _activation(g, t, where)
            (m,), shift = call.module.multipliers([v.scale])
            terms = [(v.name, _multiplier(m, shift, []), True)]
            part = _requantize(g, terms, QUANT_MIN, QUANT_MAX, f"{where}{i}")
            parts.append(unsqueezed(g, part, axis, f"{where}{i}") if stack else part)
        _int8_output(g, call, g.node("Concat", parts, where, axis=axis))

    return emit


EMITTERS: dict[type[nn.Module], Emitter] = {
    **LAYOUT_EMITTERS,
    **FLOAT_EMITTERS,
    qnn.QuantStub: quant_stub,
    qnn.DeQuantStub: dequant_stub,
    qnn.Conv2d: conv,
    qnn.ConvAdd2d: conv_add,
    qnn.Linear: linear,
    qnn.ReLU: relu,
    qnn.ReLU6: relu6,
    qnn.AdaptiveAvgPool2d: pool,
    qnn.AvgPool2d: avg_pool,
    qnn.MaxPool2d: max_pool,
    qnn.Mean: mean,
    qnn.Elementwise: elementwise,
    qnn.Interpolate: interpolate,
    qnn.ConvTranspose2d: conv_transpose,
}
"""Integer module type (exact) -> its integer-op emitter. ``QFunctional`` and its
per-call-site modules (``Add``, ``Sub``, ``Mul``, ``Cat``, ``Stack``) are recorded by
method instead."""

FUNCTIONAL: dict[str, FunctionalEmitter] = {
    "add": _functional_sum(1),
    "sub": _functional_sum(-1),
    "mul": functional_mul,
    "cat": _functional_join(stack=False),
    "stack": _functional_join(stack=True),
}
"""``QFunctional`` method -> its integer-op emitter."""


class OnnxIntegerExporter(Exporter):
    """``--format onnx-integer``: the integer-op graph of a QAT or integer stage's
    integer form, which ONNX Runtime computes bit for bit as hat does."""

    suffix = "-integer.onnx"

    def check(self) -> None:
        require_onnx()

    def export(
        self,
        model: nn.Module,
        example: torch.Tensor,
        batches: list[Batch],
        result: ExportResult,
        path: Path,
    ) -> None:
        onnx, _ = require_onnx()
        if result.kind == "float":
            raise InputError(
                f"--format onnx-integer needs a quantized stage; {result.stage!r} holds a "
                "float model (use --format onnx)"
            )
        integer = integer_form(model, result)
        proto, scales = IntegerOpsBuilder(integer, onnx).build(example)
        result.label = "ONNX (integer ops)"
        out_scale = scales[0] if scales else None
        check_and_write(proto, model, integer, batches, result, path, out_scale, exact=True)
