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
ONNX Runtime's results are therefore the integer model's, bit for bit.
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
from hatcli.export.result import ExportResult, OutputScale
from hatcli.quant.int8 import ABS_MAX, QUANT_MAX, QUANT_MIN, UINT8_OFFSET
from hatcli.quant.nn import quantized as qnn
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


def _activation(g: Graph, t: Any, what: str) -> Value:
    v = g.value(t, what)
    if v.scale is None or v.int32_scale is not None:
        raise InputError(f"{what} expects an int8 activation; its input is not one")
    return v


def _weight(g: Graph, path: str, w: torch.Tensor) -> tuple[str, str]:
    """An int8 weight as uint8 ``w + 128`` and its zero point."""
    u8 = (w.to(torch.int16) + UINT8_OFFSET).to(torch.uint8).cpu().numpy()
    return g.const(f"{path}.weight", u8), g.const(
        f"{path}.weight_zero_point", np.array(UINT8_OFFSET, dtype=np.uint8)
    )


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
    xz = g.const(f"{path}.input_zero_point", np.array(UINT8_OFFSET, dtype=np.uint8))
    kh, kw = mod.weight.shape[2:]
    ph, pw = mod.padding
    return g.node(
        "ConvInteger",
        [v.name, w, xz, wz],
        f"{path}.conv",
        kernel_shape=[kh, kw],
        strides=list(mod.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(mod.dilation),
        group=mod.groups,
    )


# --- emitters --------------------------------------------------------------------------


def quant_stub(g: Graph, call: Call[qnn.QuantStub]) -> None:
    path = call.path
    v = g.value(call.input, call.what)
    if v.scale is not None:
        raise InputError(f"cannot export {path}: its input is quantized already")
    scale = np.float32(call.module.scale.item())
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
    path, inp = call.path, call.input
    v = _activation(g, inp, call.what)
    if inp.dim() != 2:
        raise InputError(f"cannot export {path} (Linear) on a {inp.dim()}-D input: 2-D only")
    w, wz = _weight(g, path, call.module.weight.t().contiguous())
    xz = g.const(f"{path}.input_zero_point", np.array(UINT8_OFFSET, dtype=np.uint8))
    acc = g.node("MatMulInteger", [v.name, w, xz, wz], f"{path}.matmul")
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
    q = _requantize(g, terms, mod.qmin, mod.qmax, call.path)
    g.record(call.out, Value(q, float(mod.output_scale)))


def pool(g: Graph, call: Call[qnn.AdaptiveAvgPool2d]) -> None:
    mod, path = call.module, call.path
    v = _activation(g, call.input, call.what)
    c, h, w = call.input.shape[1:]
    oh, ow = call.out.shape[-2:]
    kh, kw = h // oh, w // ow
    shape = g.const(f"{path}.blocks", np.array([0, c, oh, kh, ow, kw], dtype=np.int64))
    ints = _centred(g, v.name, g.types.INT32, path)
    blocks = g.node("Reshape", [ints, shape], f"{path}.reshape")
    axes = g.const(f"{path}.axes", np.array([3, 5], dtype=np.int64))
    sums = g.node("ReduceSum", [blocks, axes], f"{path}.sum", keepdims=0)
    m, shift = mod.multiplier(v.scale, kh * kw)  # type: ignore[arg-type]
    q = _requantize(g, [(sums, _multiplier(m, shift, []), False)], QUANT_MIN, QUANT_MAX, path)
    g.record(call.out, Value(q, float(mod.output_scale)))


def functional_add(g: Graph, call: FunctionalCall) -> None:
    where = call.where
    a, b = (_activation(g, t, where) for t in call.tensors)
    mults, shift = call.module.multipliers([a.scale, b.scale])
    terms = [
        (a.name, _multiplier(mults[0], shift, []), True),
        (b.name, _multiplier(mults[1], shift, []), True),
    ]
    q = _requantize(g, terms, QUANT_MIN, QUANT_MAX, where)
    g.record(call.out, Value(q, float(call.module.output_scale)))


def functional_mul(g: Graph, call: FunctionalCall) -> None:
    where = call.where
    a, b = (_activation(g, t, where) for t in call.tensors)
    xa = _centred(g, a.name, g.types.INT32, f"{where}.a")
    xb = _centred(g, b.name, g.types.INT32, f"{where}.b")
    prod = g.node("Mul", [xa, xb], f"{where}.product")
    (m,), shift = call.module.multipliers([a.scale * b.scale], ABS_MAX * ABS_MAX)  # type: ignore[operator]
    terms = [(prod, _multiplier(m, shift, []), False)]
    q = _requantize(g, terms, QUANT_MIN, QUANT_MAX, where)
    g.record(call.out, Value(q, float(call.module.output_scale)))


def functional_cat(g: Graph, call: FunctionalCall) -> None:
    where = call.where
    parts = []
    for i, t in enumerate(call.tensors):
        v = _activation(g, t, where)
        (m,), shift = call.module.multipliers([v.scale])
        terms = [(v.name, _multiplier(m, shift, []), True)]
        parts.append(_requantize(g, terms, QUANT_MIN, QUANT_MAX, f"{where}{i}"))
    q = g.node("Concat", parts, where, axis=call.dim)
    g.record(call.out, Value(q, float(call.module.output_scale)))


EMITTERS: dict[type[nn.Module], Emitter] = {
    **LAYOUT_EMITTERS,
    qnn.QuantStub: quant_stub,
    qnn.DeQuantStub: dequant_stub,
    qnn.Conv2d: conv,
    qnn.ConvAdd2d: conv_add,
    qnn.Linear: linear,
    qnn.ReLU: relu,
    qnn.ReLU6: relu6,
    qnn.AdaptiveAvgPool2d: pool,
}
"""Integer module type (exact) -> its integer-op emitter."""

FUNCTIONAL: dict[str, FunctionalEmitter] = {
    "add": functional_add,
    "cat": functional_cat,
    "mul": functional_mul,
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
