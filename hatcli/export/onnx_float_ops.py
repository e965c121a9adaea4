"""Float computations in an integer model's ONNX graphs: the float modules and torch
functions of a float island (between a ``DeQuantStub`` and a ``QuantStub``), and the
float function an ``Elementwise`` table was built from (its QDQ form).

Each is built from standard ops of opset 17: ``Sigmoid``, ``Tanh``, ``Relu``, ``Clip``,
``HardSigmoid``, ``HardSwish``, ``LeakyRelu``, ``Elu``, ``Softplus``, ``Erf`` (GELU),
``Softmax``/``LogSoftmax``, ``LayerNormalization``, ``Add``/``Sub``/``Mul``/``Div`` and
``MatMul``. A float module with no form here is refused by its path (``onnx_record``).
ONNX Runtime computes these in float32 as torch does, up to the last bits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hatcli.errors import InputError
from hatcli.export.onnx_graph import Call, Emitter, Graph, TorchCall, TorchEmitter, Value
from hatcli.quant.graph.ops import ScalarOp

Builder = Callable[[Graph, str, str, dict[str, Any]], str]
"""``(graph, x, name, options) -> y``: the nodes of one float function of ``x``."""


def _f32(g: Graph, name: str, value: float) -> str:
    return g.const(name, np.array(value, dtype=np.float32))


def _op(op: str, **attrs: Any) -> Builder:
    """A function that is one ONNX op."""

    def build(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
        return g.node(op, [x], f"{name}.{op.lower()}", **attrs)

    return build


def _with_option(op: str, attr: str, option: str, default: float) -> Builder:
    """One ONNX op whose float attribute is the function's option."""

    def build(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
        value = float(options.get(option, default))
        return g.node(op, [x], f"{name}.{op.lower()}", **{attr: value})

    return build


def _times(g: Graph, x: str, fn: str, name: str) -> str:
    """``x * fn``."""
    return g.node("Mul", [x, fn], f"{name}.times")


def _silu(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
    return _times(g, x, g.node("Sigmoid", [x], f"{name}.sigmoid"), name)


def _mish(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
    softplus = g.node("Softplus", [x], f"{name}.softplus")
    return _times(g, x, g.node("Tanh", [softplus], f"{name}.tanh"), name)


def _gelu(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
    """``x/2 * (1 + erf(x / sqrt 2))``, or the tanh approximation."""
    if options.get("approximate", "none") == "tanh":
        cube = g.node("Mul", [x, g.node("Mul", [x, x], f"{name}.square")], f"{name}.cube")
        inner = g.node("Mul", [cube, _f32(g, f"{name}.c", 0.044715)], f"{name}.c_cube")
        inner = g.node("Add", [x, inner], f"{name}.inner")
        k = _f32(g, f"{name}.k", math.sqrt(2.0 / math.pi))
        t = g.node("Tanh", [g.node("Mul", [inner, k], f"{name}.scaled")], f"{name}.tanh")
    else:
        scaled = g.node("Mul", [x, _f32(g, f"{name}.k", math.sqrt(0.5))], f"{name}.scaled")
        t = g.node("Erf", [scaled], f"{name}.erf")
    half = g.node("Mul", [x, _f32(g, f"{name}.half", 0.5)], f"{name}.half_x")
    return _times(g, half, g.node("Add", [t, _f32(g, f"{name}.one", 1.0)], f"{name}.1p"), name)


def _softplus(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
    """``log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold``."""
    beta, threshold = float(options.get("beta", 1.0)), float(options.get("threshold", 20.0))
    bx = g.node("Mul", [x, _f32(g, f"{name}.beta", beta)], f"{name}.bx")
    y = g.node("Softplus", [bx], f"{name}.softplus")
    y = g.node("Div", [y, _f32(g, f"{name}.beta", beta)], f"{name}.div")
    over = g.node("Greater", [bx, _f32(g, f"{name}.threshold", threshold)], f"{name}.over")
    return g.node("Where", [over, x, y], f"{name}.where")


def _clip(low_key: str, high_key: str, low: float | None, high: float | None) -> Builder:
    """``Clip`` at the function's bounds (``None``: unbounded on that side)."""

    def build(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
        bounds = []
        for key, default, side in ((low_key, low, "min"), (high_key, high, "max")):
            value = options.get(key, default)
            bounds.append("" if value is None else _f32(g, f"{name}.{side}", float(value)))
        return g.node("Clip", [x, *bounds], f"{name}.clip")

    return build


def _scalar(g: Graph, x: str, name: str, options: dict[str, Any]) -> str:
    """``ScalarOp``: ``x op c`` or ``c op x``."""
    c = _f32(g, f"{name}.constant", float(options["constant"]))
    op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[options["op"]]
    return g.node(op, [c, x] if options["reverse"] else [x, c], f"{name}.{options['op']}")


FUNCTIONS: dict[str, Builder] = {
    "sigmoid": _op("Sigmoid"),
    "tanh": _op("Tanh"),
    "relu": _op("Relu"),
    "relu6": _clip("min", "max", 0.0, 6.0),
    "hardsigmoid": _op("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    "hardswish": _op("HardSwish"),
    "silu": _silu,
    "mish": _mish,
    "gelu": _gelu,
    "leaky_relu": _with_option("LeakyRelu", "alpha", "negative_slope", 0.01),
    "elu": _with_option("Elu", "alpha", "alpha", 1.0),
    "softplus": _softplus,
    "hardtanh": _clip("min_val", "max_val", -1.0, 1.0),
    "clamp": _clip("min", "max", None, None),
    "scalar": _scalar,
}
"""The float functions of one activation, by name."""

_MODULES: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    nn.Sigmoid: ("sigmoid", ()),
    nn.Tanh: ("tanh", ()),
    nn.ReLU: ("relu", ()),
    nn.ReLU6: ("relu6", ()),
    nn.Hardsigmoid: ("hardsigmoid", ()),
    nn.Hardswish: ("hardswish", ()),
    nn.SiLU: ("silu", ()),
    nn.Mish: ("mish", ()),
    nn.GELU: ("gelu", ("approximate",)),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
    nn.ELU: ("elu", ("alpha",)),
    nn.Softplus: ("softplus", ("beta", "threshold")),
    nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
}
"""Activation module -> its function's name and the attributes that are its options."""

_TORCH: dict[Any, tuple[str, tuple[str, ...]]] = {
    **dict.fromkeys([torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid], ("sigmoid", ("input",))),
    **dict.fromkeys([torch.tanh, torch.Tensor.tanh, F.tanh], ("tanh", ("input",))),
    **dict.fromkeys([torch.relu, torch.Tensor.relu, F.relu], ("relu", ("input",))),
    F.relu6: ("relu6", ("input",)),
    F.hardsigmoid: ("hardsigmoid", ("input",)),
    F.hardswish: ("hardswish", ("input",)),
    F.silu: ("silu", ("input",)),
    F.mish: ("mish", ("input",)),
    F.gelu: ("gelu", ("input", "approximate")),
    F.leaky_relu: ("leaky_relu", ("input", "negative_slope")),
    F.elu: ("elu", ("input", "alpha")),
    F.softplus: ("softplus", ("input", "beta", "threshold")),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val")),
    **dict.fromkeys(
        [torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip],
        ("clamp", ("input", "min", "max")),
    ),
}
"""Activation function -> its name and its parameters, in order."""


def function_of(fn: Callable[..., Any]) -> tuple[Builder, dict[str, Any]] | None:
    """The builder and options computing ``fn`` (an ``Elementwise``'s function: an
    activation module, a torch function or a ``functools.partial`` of one, a
    ``ScalarOp``); ``None`` when there is none."""
    if isinstance(fn, ScalarOp):
        return _scalar, {"op": fn.op, "constant": fn.constant, "reverse": fn.reverse}
    if isinstance(fn, nn.Module):
        entry = _MODULES.get(type(fn))
        if entry is None:
            return None
        name, attrs = entry
        return FUNCTIONS[name], {a: getattr(fn, a) for a in attrs}
    func, options = fn, {}
    if isinstance(fn, functools.partial) and not fn.args:
        func, options = fn.func, dict(fn.keywords)
    found = _TORCH.get(func)
    return None if found is None else (FUNCTIONS[found[0]], options)


# --- float modules of a float island ---------------------------------------------------


_NOT_FLOAT = "a quantized activation (a DeQuantStub is missing)"


def _float_input(g: Graph, call: Call[nn.Module]) -> Value:
    v = g.value(call.input, call.what)
    if v.quantized:
        raise InputError(f"cannot export {call.what}: a float module reads {_NOT_FLOAT}")
    return v


def activation(g: Graph, call: Call[nn.Module]) -> None:
    v = _float_input(g, call)
    found = function_of(call.module)
    assert found is not None  # only the modules of _MODULES have this emitter
    builder, options = found
    g.record(call.out, Value(builder(g, v.name, call.path, options)))


def _layer_norm(
    g: Graph,
    x: str,
    name: str,
    shape: tuple[int, ...],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> str:
    def param(t: torch.Tensor | None, fill: float, what: str) -> str:
        value = np.full(shape, fill, np.float32) if t is None else t.detach().float().numpy()
        return g.const(f"{name}.{what}", value)

    scale, b = param(weight, 1.0, "weight"), param(bias, 0.0, "bias")
    return g.node(
        "LayerNormalization", [x, scale, b], f"{name}.layer_norm", axis=-len(shape), epsilon=eps
    )


def layer_norm(g: Graph, call: Call[nn.LayerNorm]) -> None:
    mod = call.module
    v = _float_input(g, call)
    shape = tuple(mod.normalized_shape)
    y = _layer_norm(g, v.name, call.path, shape, mod.weight, mod.bias, mod.eps)
    g.record(call.out, Value(y))


def _softmax_node(g: Graph, x: str, dim: Any, op: str, name: str, what: str) -> str:
    if dim is None:
        raise InputError(f"cannot export {what}: give it a dim (an implicit dim is deprecated)")
    return g.node(op, [x], f"{name}.{op.lower()}", axis=int(dim))


def softmax(g: Graph, call: Call[nn.Softmax | nn.LogSoftmax]) -> None:
    v = _float_input(g, call)
    op = "Softmax" if isinstance(call.module, nn.Softmax) else "LogSoftmax"
    g.record(call.out, Value(_softmax_node(g, v.name, call.module.dim, op, call.path, call.what)))


FLOAT_EMITTERS: dict[type[nn.Module], Emitter] = {
    **dict.fromkeys(_MODULES, activation),
    nn.LayerNorm: layer_norm,
    nn.Softmax: softmax,
    nn.LogSoftmax: softmax,
}
"""Float module type (exact) -> its emitter, for the float islands of every ONNX form."""


# --- torch functions of a float island -------------------------------------------------


def _float_operand(g: Graph, call: TorchCall, a: Any) -> str:
    """A recorded float value, or a constant (a number, a tensor not from the input)."""
    if g.recorded(a):
        v = g.values[id(a)]
        if v.quantized:
            raise call.refuse(f"it computes with {_NOT_FLOAT}")
        return v.name
    if isinstance(a, torch.Tensor):
        return g.const(f"{call.op}.constant", a.detach().float().cpu().numpy())
    if isinstance(a, bool) or not isinstance(a, int | float):
        raise call.refuse(f"an operand of type {type(a).__name__}")
    return _f32(g, f"{call.op}.constant", float(a))


def _function(name: str, params: tuple[str, ...]) -> TorchEmitter:
    def emit(g: Graph, call: TorchCall) -> None:
        x = _float_operand(g, call, call.args[0])
        given = {p: call.arg(i, p) for i, p in enumerate(params) if i}
        options = {p: value for p, value in given.items() if value is not None}
        g.record(call.out, Value(FUNCTIONS[name](g, x, f"{x}.{call.op}", options)))

    return emit


def _binary(op: str, reverse: bool = False) -> TorchEmitter:
    """``a op b`` (``b op a`` for a reflected operator) of floats."""

    def emit(g: Graph, call: TorchCall) -> None:
        if call.kwargs.get("alpha", 1) != 1 or call.kwargs.get("rounding_mode") is not None:
            raise call.refuse("its alpha or rounding_mode")
        a, b = (_float_operand(g, call, t) for t in call.args[:2])
        name = g.node(op, [b, a] if reverse else [a, b], f"{a}.{op.lower()}")
        g.record(call.out, Value(name))

    return emit


def _softmax_function(op: str) -> TorchEmitter:
    def emit(g: Graph, call: TorchCall) -> None:
        x = _float_operand(g, call, call.args[0])
        name = _softmax_node(g, x, call.arg(1, "dim"), op, x, f"torch.{call.op}")
        g.record(call.out, Value(name))

    return emit


def _layer_norm_function(g: Graph, call: TorchCall) -> None:
    x = _float_operand(g, call, call.args[0])
    shape = tuple(int(n) for n in call.arg(1, "normalized_shape"))
    weight, bias, eps = call.arg(2, "weight"), call.arg(3, "bias"), call.arg(4, "eps", 1e-5)
    g.record(call.out, Value(_layer_norm(g, x, f"{x}.layer_norm", shape, weight, bias, eps)))


def _binaries(ops: dict[str, list[Any]]) -> dict[Any, TorchEmitter]:
    table: dict[Any, TorchEmitter] = {}
    for op, funcs in ops.items():
        table.update(dict.fromkeys(funcs, _binary(op)))
    return table


FLOAT_FUNCTIONS: dict[Any, TorchEmitter] = {
    **{f: _function(name, params) for f, (name, params) in _TORCH.items()},
    **dict.fromkeys([F.softmax, torch.softmax, torch.Tensor.softmax], _softmax_function("Softmax")),
    **dict.fromkeys(
        [F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax],
        _softmax_function("LogSoftmax"),
    ),
    F.layer_norm: _layer_norm_function,
    **_binaries(
        {
            "Add": [torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__iadd__],
            "Sub": [torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__isub__],
            "Mul": [torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__imul__],
            "Div": [
                torch.div,
                torch.Tensor.div,
                torch.Tensor.__truediv__,
                torch.Tensor.__itruediv__,
            ],
            "MatMul": [torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__],
        }
    ),
    torch.Tensor.__radd__: _binary("Add", reverse=True),
    torch.Tensor.__rsub__: _binary("Sub", reverse=True),
    torch.Tensor.__rmul__: _binary("Mul", reverse=True),
    torch.Tensor.__rtruediv__: _binary("Div", reverse=True),
}
"""torch function -> its emitter, for a float island's function of recorded float values."""
