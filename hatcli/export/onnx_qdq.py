"""The QDQ ONNX form of an integer model: float ops between ``DequantizeLinear`` and
``QuantizeLinear``, at the integer model's scales.

Convs and linears get int8 weights per output channel (axis 0) and an int32 bias at
``s_in * s_w``; activations are int8 per tensor with zero point 0; fused ReLU/ReLU6
become ``Relu``/``Clip``; residual adds and ``QFunctional`` ops (add, sub, mul, cat,
stack) are float ops between DQ and Q, and so are pooling (``MaxPool``, ``AveragePool``,
``MatMul`` by averaging matrices for uneven adaptive windows), means (``ReduceMean``)
an ``Elementwise`` table's function (``Sigmoid``, ``Erf`` for GELU, ...; a function
with no float form is its table, a ``Gather``), bilinear resizing (``Resize``) and
transposed convs (``ConvTranspose``); nearest resizing gathers the int8 values at
torch's picks. This is the form other toolchains read;
ONNX Runtime computes it in float32 with its own rounding, so it is close to the
integer model, not equal (see ``onnx_integer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hatcli.errors import InputError
from hatcli.export.exporter import Batch, Exporter
from hatcli.export.onnx_common import check_and_write, integer_form, require_onnx
from hatcli.export.onnx_float import torch_onnx_export
from hatcli.export.onnx_float_ops import FLOAT_EMITTERS, function_of
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
    pool_attributes,
    reduced_axes,
    resize_nearest,
    scale_factors,
)
from hatcli.export.result import ExportResult, OutputScale
from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN, UINT8_OFFSET
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.qat.conv_transpose import to_transposed_layout
from hatcli.quant.nn.quantized.weighted import WeightedIntegerModule
from hatcli.quant.qtensor import QTensor

_I32 = torch.iinfo(torch.int32)


class QDQBuilder:
    """Builds the QDQ ONNX graph of an integer model by recording one forward pass."""

    def __init__(self, model: nn.Module, onnx: Any) -> None:
        self.model = model
        self.onnx = onnx

    def build(self, example: torch.Tensor) -> tuple[Any, list[OutputScale]]:
        """The ONNX model, and the output scale (tensor, axis) of each output."""
        return record_graph(self.model, self.onnx, example, EMITTERS, FUNCTIONAL)


# --- helpers ---------------------------------------------------------------------------


def _zero8(g: Graph) -> str:
    """The shared int8 zero point."""
    return g.once("zero_int8", lambda: g.const("zero_int8", np.array(0, dtype=np.int8)))


def quantize(g: Graph, x: str, scale: float, name: str) -> str:
    s = g.const(f"{name}.scale", np.array(scale, dtype=np.float32))
    return g.node("QuantizeLinear", [x, s, _zero8(g)], f"{name}.q")


def dequantize(g: Graph, v: Value, what: str) -> str:
    """The float form of an int8 activation (one ``DequantizeLinear`` per value)."""
    if v.scale is None:
        raise InputError(f"{what} expects an int8 activation; its input is not quantized")
    scale = v.scale

    def make() -> str:
        s = g.const(f"{v.name}.scale", np.array(scale, dtype=np.float32))
        return g.node("DequantizeLinear", [v.name, s, _zero8(g)], f"{v.name}.dq")

    return g.once(f"dequantized:{v.name}", make)


def _output(g: Graph, call: Call[Any] | FunctionalCall, y: str) -> None:
    """Quantize a float result to the module's output scale, as its output."""
    s_out = float(call.module.output_scale)
    g.record(call.out, Value(quantize(g, y, s_out, call.path), s_out))


def _clamp(g: Graph, y: str, qmin: int, qmax: int, s_out: float, path: str) -> str:
    if qmin == 0 and qmax == QUANT_MAX:
        return g.node("Relu", [y], f"{path}.relu")
    if qmin <= QUANT_MIN and qmax >= QUANT_MAX:
        return y
    lo = g.const(f"{path}.min", np.array(max(qmin, QUANT_MIN) * s_out, dtype=np.float32))
    hi = g.const(f"{path}.max", np.array(min(qmax, QUANT_MAX) * s_out, dtype=np.float32))
    return g.node("Clip", [y, lo, hi], f"{path}.clip")


def _weights(
    g: Graph, path: str, mod: WeightedIntegerModule, s_in: float, weight: torch.Tensor, axis: int
) -> tuple[str, str]:
    """Dequantized weight and bias: int8 per channel, int32 bias at ``s_in * s_w``."""
    w_scale = mod.weight_scale.double()
    acc_scale = s_in * w_scale
    bias = torch.round(mod.bias.double() / acc_scale).clamp(_I32.min, _I32.max)
    out_ch = w_scale.numel()
    w = g.const(f"{path}.weight", weight.cpu().numpy().astype(np.int8))
    ws = g.const(f"{path}.weight_scale", w_scale.float().cpu().numpy())
    wz = g.const(f"{path}.weight_zero_point", np.zeros(out_ch, dtype=np.int8))
    wf = g.node("DequantizeLinear", [w, ws, wz], f"{path}.weight.dq", axis=axis)
    b = g.const(f"{path}.bias", bias.to(torch.int32).cpu().numpy())
    bs = g.const(f"{path}.bias_scale", acc_scale.float().cpu().numpy())
    bz = g.const(f"{path}.bias_zero_point", np.zeros(out_ch, dtype=np.int32))
    bf = g.node("DequantizeLinear", [b, bs, bz], f"{path}.bias.dq", axis=0)
    return wf, bf


def _finish(g: Graph, call: Call[WeightedIntegerModule], y: str) -> None:
    """Clamp and quantize a conv's or linear's float output; an int32 output (no output
    scale) stays float, which hat dequantizes per channel."""
    mod, out = call.module, call.out
    if mod.output_scale is None:
        assert isinstance(out, QTensor)
        g.record(out, Value(y, None, (out.q_scale.clone(), out.q_axis)))
        return
    s_out = float(mod.output_scale)
    y = _clamp(g, y, mod.qmin, mod.qmax, s_out, call.path)
    g.record(out, Value(quantize(g, y, s_out, call.path), s_out))


def _conv_node(g: Graph, call: Call[qnn.Conv2d]) -> str:
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    x = dequantize(g, v, path)
    wf, bf = _weights(g, path, mod, v.scale, mod.weight, 0)  # type: ignore[arg-type]
    kh, kw = mod.weight.shape[2:]
    ph, pw = mod.padding
    return g.node(
        "Conv",
        [x, wf, bf],
        f"{path}.conv",
        kernel_shape=[kh, kw],
        strides=list(mod.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(mod.dilation),
        group=mod.groups,
    )


# --- emitters --------------------------------------------------------------------------


def quant_stub(g: Graph, call: Call[qnn.QuantStub]) -> None:
    """``QuantizeLinear``; a constant's (e.g. a layer scale a quantized mul reads) int8
    values are an initializer."""
    scale = float(call.module.scale)
    if not g.recorded(call.input):
        ints = g.const(f"{call.path}.value", call.out.int_repr().cpu().numpy())
        g.record(call.out, Value(ints, scale))
        return
    v = g.value(call.input, call.what)
    if v.scale is not None:
        raise InputError(f"cannot export {call.path}: its input is quantized already")
    g.record(call.out, Value(quantize(g, v.name, scale, call.path), scale))


def dequant_stub(g: Graph, call: Call[qnn.DeQuantStub]) -> None:
    v = g.value(call.input, call.what)
    if v.scale is None:
        g.record(call.out, v)
        return
    name = dequantize(g, v, call.path)
    g.record(call.out, Value(name, None, (torch.tensor(v.scale), None)))


def conv(g: Graph, call: Call[qnn.Conv2d]) -> None:
    _finish(g, call, _conv_node(g, call))


def conv_add(g: Graph, call: Call[qnn.ConvAdd2d]) -> None:
    y = _conv_node(g, call)
    where = f"{call.path} residual"
    r = dequantize(g, g.value(call.args[1], where), where)
    _finish(g, call, g.node("Add", [y, r], f"{call.path}.add"))


def linear(g: Graph, call: Call[qnn.Linear]) -> None:
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    x = dequantize(g, v, path)
    if call.input.dim() == 2:
        wf, bf = _weights(g, path, mod, v.scale, mod.weight, 0)  # type: ignore[arg-type]
        y = g.node("Gemm", [x, wf, bf], f"{path}.gemm", transB=1)
    else:
        wt = mod.weight.t().contiguous()
        wf, bf = _weights(g, path, mod, v.scale, wt, 1)  # type: ignore[arg-type]
        y = g.node("MatMul", [x, wf], f"{path}.matmul")
        y = g.node("Add", [y, bf], f"{path}.bias_add")
    _finish(g, call, y)


def relu(g: Graph, call: Call[qnn.ReLU]) -> None:
    v = g.value(call.input, call.what)
    y = g.node("Relu", [dequantize(g, v, call.path)], f"{call.path}.relu")
    g.record(call.out, Value(quantize(g, y, v.scale, call.path), v.scale))  # type: ignore[arg-type]


def relu6(g: Graph, call: Call[qnn.ReLU6]) -> None:
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    y = _clamp(g, dequantize(g, v, path), mod.qmin, mod.qmax, float(mod.output_scale), path)
    _output(g, call, y)


def pool(g: Graph, call: Call[qnn.AdaptiveAvgPool2d]) -> None:
    path = call.path
    v = g.value(call.input, call.what)
    x = dequantize(g, v, path)
    h, w = call.input.shape[-2:]
    oh, ow = call.out.shape[-2:]
    if (oh, ow) == (1, 1):
        y = g.node("GlobalAveragePool", [x], f"{path}.pool")
    elif h % oh or w % ow:
        y = _window_means(g, x, path, (h, w), (oh, ow))
    else:
        k = [h // oh, w // ow]
        y = g.node("AveragePool", [x], f"{path}.pool", kernel_shape=k, strides=k)
    _output(g, call, y)


def _window_means(g: Graph, x: str, path: str, size: tuple[int, int], out: tuple[int, int]) -> str:
    """Adaptive average pooling with windows of several sizes: ``A_h @ x @ A_w^T``, each
    row of ``A`` averaging one window."""
    rows, cols = (adaptive_windows(n, o).astype(np.float32) for n, o in zip(size, out, strict=True))
    a_h = g.const(f"{path}.rows", rows / rows.sum(1, keepdims=True))
    a_w = g.const(f"{path}.cols", (cols / cols.sum(1, keepdims=True)).T.copy())
    y = g.node("MatMul", [a_h, x], f"{path}.row_means")
    return g.node("MatMul", [y, a_w], f"{path}.means")


def avg_pool(g: Graph, call: Call[qnn.AvgPool2d]) -> None:
    """``AveragePool`` over whole windows (padding counted), times ``k*k / divisor``
    where torch divides by another number (``count_include_pad=False`` at the edges,
    ``ceil_mode`` windows, ``divisor_override``)."""
    mod, path = call.module, call.path
    x = dequantize(g, g.value(call.input, call.what), path)
    attrs = pool_attributes(call, mod.kernel_size, mod.stride, mod.padding)
    y = g.node("AveragePool", [x], f"{path}.pool", count_include_pad=1, **attrs)
    window = mod.kernel_size[0] * mod.kernel_size[1]
    divisor = mod.divisors(*call.input.shape[-2:], *call.out.shape[-2:])
    if bool((divisor != window).any()):
        factor = g.const(f"{path}.divisor", (window / divisor.double()).float().numpy())
        y = g.node("Mul", [y, factor], f"{path}.rescale")
    _output(g, call, y)


def max_pool(g: Graph, call: Call[qnn.MaxPool2d]) -> None:
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    attrs = pool_attributes(call, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    y = g.node("MaxPool", [dequantize(g, v, path)], f"{path}.pool", **attrs)
    g.record(call.out, Value(quantize(g, y, v.scale, path), v.scale))  # type: ignore[arg-type]


def mean(g: Graph, call: Call[qnn.Mean]) -> None:
    mod, path = call.module, call.path
    x = dequantize(g, g.value(call.input, call.what), path)
    axes = reduced_axes(call, mod.dim)
    y = g.node("ReduceMean", [x], f"{path}.mean", axes=axes, keepdims=int(mod.keepdim))
    _output(g, call, y)


def elementwise(g: Graph, call: Call[qnn.Elementwise]) -> None:
    """The float function between DQ and Q; a function with no float form here is its
    int8 table, gathered at ``q + 128``."""
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    found = function_of(mod.fn)
    if found is None:
        _lookup(g, call, v)
        return
    builder, options = found
    _output(g, call, builder(g, dequantize(g, v, path), path, options))


def _lookup(g: Graph, call: Call[qnn.Elementwise], v: Value) -> None:
    path = call.path
    table = g.const(f"{path}.table", call.module.table(v.scale).numpy())  # type: ignore[arg-type]
    offset = g.const(f"{path}.offset", np.array(UINT8_OFFSET, dtype=np.int32))
    index = g.node("Cast", [v.name], f"{path}.int32", to=g.types.INT32)
    index = g.node("Add", [index, offset], f"{path}.index")
    s_out = float(call.module.output_scale)
    g.record(call.out, Value(g.node("Gather", [table, index], f"{path}.lookup"), s_out))


def interpolate(g: Graph, call: Call[qnn.Interpolate]) -> None:
    """Nearest: torch's picks gathered (as the integer form). Bilinear: ``Resize``
    (``linear``, torch's coordinates) between DQ and Q, at the call's scale factors,
    or at its sizes when it was given a size."""
    mod, path = call.module, call.path
    if mod.output_scale is None:
        resize_nearest(g, call)
        return
    x = dequantize(g, g.value(call.input, call.what), path)
    fh, fw = scale_factors(call)
    if fh is not None and fw is not None:
        factors = np.array([1, 1, fh, fw], dtype=np.float32)
        inputs = [x, "", g.const(f"{path}.scales", factors)]
    else:
        inputs = [x, "", "", _sizes(g, x, call.out.shape[2:], path)]
    mode = "align_corners" if mod.align_corners else "pytorch_half_pixel"
    y = g.node(
        "Resize", inputs, f"{path}.resize", mode="linear", coordinate_transformation_mode=mode
    )
    _output(g, call, y)


def _sizes(g: Graph, x: str, hw: torch.Size, path: str) -> str:
    """``x``'s batch and channels, then ``hw``: a ``Resize`` sizes input for any batch."""
    shape = g.node("Shape", [x], f"{path}.shape", end=2)
    out = g.const(f"{path}.size", np.array(list(hw), dtype=np.int64))
    return g.node("Concat", [shape, out], f"{path}.sizes", axis=0)


def conv_transpose(g: Graph, call: Call[qnn.ConvTranspose2d]) -> None:
    mod, path = call.module, call.path
    v = g.value(call.input, call.what)
    x = dequantize(g, v, path)
    wf, bf = _transposed_weights(g, call, v.scale)  # type: ignore[arg-type]
    ph, pw = mod.padding
    y = g.node(
        "ConvTranspose",
        [x, wf, bf],
        f"{path}.conv_transpose",
        kernel_shape=list(mod.weight.shape[2:]),
        strides=list(mod.stride),
        pads=[ph, pw, ph, pw],
        output_padding=list(mod.output_padding),
        dilations=list(mod.dilation),
        group=mod.groups,
    )
    _finish(g, call, y)


def _transposed_weights(g: Graph, call: Call[qnn.ConvTranspose2d], s_in: float) -> tuple[str, str]:
    """The dequantized weight in ``ConvTranspose``'s layout [in, out / groups, kh, kw],
    and the bias. One group: int8 in that layout, per channel along axis 1. Several: no
    axis of that layout holds every output channel, so the conv layout [out, in /
    groups, kh, kw] is dequantized along axis 0 and rearranged."""
    mod, path = call.module, call.path
    if mod.groups == 1:
        return _weights(g, path, mod, s_in, to_transposed_layout(mod.weight, 1), 1)
    wf, bf = _weights(g, path, mod, s_in, mod.weight, 0)
    out, in_g, kh, kw = mod.weight.shape
    groups = mod.groups
    split = g.const(f"{path}.groups", np.array([groups, out // groups, in_g, kh, kw], np.int64))
    layout = g.const(f"{path}.layout", np.array([groups * in_g, out // groups, kh, kw], np.int64))
    wf = g.node("Reshape", [wf, split], f"{path}.weight.groups")
    wf = g.node("Transpose", [wf], f"{path}.weight.swap", perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [wf, layout], f"{path}.weight.layout"), bf


def _combine(op: str, stack: bool = False) -> FunctionalEmitter:
    """A ``QFunctional`` method as one float op between DQ and Q (``stack``: a
    ``Concat`` of the inputs, each unsqueezed)."""

    def emit(g: Graph, call: FunctionalCall) -> None:
        where = call.where
        inputs = [dequantize(g, g.value(t, where), where) for t in call.tensors]
        attrs = {"axis": call.dim % call.out.dim()} if op == "Concat" else {}
        if stack:
            inputs = [unsqueezed(g, x, attrs["axis"], where) for x in inputs]
        _output(g, call, g.node(op, inputs, where, **attrs))

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
"""Integer module type (exact) -> its QDQ emitter. ``QFunctional`` and its per-call-site
modules (``Add``, ``Sub``, ``Mul``, ``Cat``, ``Stack``) are recorded by method instead."""

FUNCTIONAL: dict[str, FunctionalEmitter] = {
    "add": _combine("Add"),
    "sub": _combine("Sub"),
    "mul": _combine("Mul"),
    "cat": _combine("Concat"),
    "stack": _combine("Concat", stack=True),
}
"""``QFunctional`` method -> its QDQ emitter."""


class OnnxExporter(Exporter):
    """``--format onnx``: a float model through ``torch.onnx`` (see ``onnx_float``), a
    QAT or integer model as the QDQ graph of its integer form."""

    suffix = ".onnx"

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
            result.label = "ONNX"
            proto = torch_onnx_export(model, example)
            check_and_write(proto, model, model, batches, result, path)
            return
        integer = integer_form(model, result)
        proto, scales = QDQBuilder(integer, onnx).build(example)
        result.label = "ONNX (QDQ int8)"
        out_scale = scales[0] if scales else None
        check_and_write(proto, model, integer, batches, result, path, out_scale)
