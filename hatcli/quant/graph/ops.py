"""Which QAT module replaces each traced call: the op table of graph-mode preparation.

A traced node is one of:

- a **quantized op**: replaced by a QAT module (``Replacement``), its tensor inputs
  quantized first;
- a **shape op** (view, permute, chunk, getitem, ...): moves int8 values without
  arithmetic, so it stays as it is and its output has its input's quantization;
- an **identity in eval** (functional dropout): its uses read its input;
- a **float island**: anything else that computes on tensors; it stays a float op, its
  inputs are dequantized and its output quantized where a quantized op reads it;
- **not a tensor** (``x.size()``, ``h // 2``): left alone.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from hatcli.quant.nn import qat
from hatcli.quant.qconfig import QConfig

Arg = Any  # a node argument: an fx.Node, a constant, or a list/tuple of them


@dataclass
class Replacement:
    """A call replaced by a QAT module ``make(qconfig)`` called on ``inputs``."""

    base: str  # the stem of the new module's name ("add", "interpolate")
    type_name: str  # what a qconfig ``types`` entry and the report call it
    inputs: list[Arg]  # the module's positional arguments (nodes to quantize)
    make: Callable[[QConfig], nn.Module]
    how: str = "int8"
    requantizes: bool = True  # False: keeps its input's scale (no output fake-quant)
    weighted: bool = False  # a conv or linear: int32 out when it feeds the model output
    has_residual: bool = False  # a conv with a residual add: always an int8 output
    quantizes_inputs: bool = True
    type_names: list[str] = field(default_factory=list)  # more names for qconfig ``types``


SHAPE_FUNCTIONS: set[Any] = {
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    torch.unbind,
    operator.getitem,
}
SHAPE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "chunk",
    "split",
    "unbind",
    "clone",
    "detach",
}
SEQUENCE_RESULTS = {torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind"}
NOT_TENSOR_METHODS = {"size", "dim", "numel", "nelement", "ndimension"}
NOT_TENSOR_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
IDENTITY_FUNCTIONS: set[Any] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
}
IDENTITY_MODULES: tuple[type[nn.Module], ...] = (nn.Identity,)
SHAPE_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten)


def _bind(names: Sequence[str], args: Sequence[Arg], kwargs: dict[str, Arg]) -> dict[str, Arg]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def _is_node(a: Arg) -> bool:
    return isinstance(a, fx.Node)


def _constant(a: Arg) -> bool:
    """A value fixed at trace time (no node inside)."""
    if isinstance(a, (list, tuple)):
        return all(_constant(x) for x in a)
    return not _is_node(a)


# --- element-wise functions: one int8 input, a 256-entry table -------------------------

_ELEMENTWISE: dict[Any, tuple[str, Sequence[str]]] = {
    torch.sigmoid: ("sigmoid", ("input",)),
    F.sigmoid: ("sigmoid", ("input",)),
    "sigmoid": ("sigmoid", ("input",)),
    torch.tanh: ("tanh", ("input",)),
    F.tanh: ("tanh", ("input",)),
    "tanh": ("tanh", ("input",)),
    F.hardsigmoid: ("hardsigmoid", ("input", "inplace")),
    F.silu: ("silu", ("input", "inplace")),
    F.hardswish: ("hardswish", ("input", "inplace")),
    F.gelu: ("gelu", ("input", "approximate")),
    F.leaky_relu: ("leaky_relu", ("input", "negative_slope", "inplace")),
    F.elu: ("elu", ("input", "alpha", "inplace")),
    F.mish: ("mish", ("input", "inplace")),
    F.softplus: ("softplus", ("input", "beta", "threshold")),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val", "inplace")),
    torch.clamp: ("clamp", ("input", "min", "max")),
    torch.clip: ("clamp", ("input", "min", "max")),
    "clamp": ("clamp", ("input", "min", "max")),
    "clip": ("clamp", ("input", "min", "max")),
    "clamp_": ("clamp", ("input", "min", "max")),
    "sigmoid_": ("sigmoid", ("input",)),
}
_FLOAT_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "mish": F.mish,
    "softplus": F.softplus,
    "hardtanh": F.hardtanh,
    "clamp": torch.clamp,
}
RELU: set[Any] = {F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"}
"""The calls of ReLU: functions and tensor methods."""
RELU6: set[Any] = {F.relu6}


def _elementwise(name: str, bound: dict[str, Arg]) -> Replacement | None:
    options = {k: v for k, v in bound.items() if k not in ("input", "inplace")}
    if not _constant(list(options.values())):
        return None  # a bound computed at run time: a float island
    x = bound["input"]
    if name in ("hardtanh", "clamp"):
        low = options.get("min_val", options.get("min"))
        high = options.get("max_val", options.get("max"))
        if low == 0 and high is None:
            return Replacement("relu", "relu", [x], lambda q: qat.ReLU(q), "keeps scale", False)
        if low == 0 and high == 6:
            return Replacement("relu6", "relu6", [x], lambda q: qat.ReLU6(q))
    fn = functools.partial(_FLOAT_FUNCTIONS[name], **options)
    return Replacement(name, name, [x], lambda q: qat.Elementwise(fn, q, name=name), "table lookup")


# --- arithmetic -----------------------------------------------------------------------

ADD: set[Any] = {operator.add, operator.iadd, torch.add, "add", "add_"}
"""The calls of an addition: operators (``x + y``, ``out += y``), function, methods."""
_SUB: set[Any] = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL: set[Any] = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV: set[Any] = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_SCALAR_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
}


class ScalarOp:
    """``x op c`` (or ``c op x``) for a Python number ``c``: element-wise on ``x``."""

    def __init__(self, op: str, constant: float, reverse: bool = False) -> None:
        self.op, self.constant, self.reverse = op, constant, reverse

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fn = _SCALAR_OPS[self.op]
        out: torch.Tensor = fn(self.constant, x) if self.reverse else fn(x, self.constant)
        return out

    def __repr__(self) -> str:
        return f"{self.constant} {self.op} x" if self.reverse else f"x {self.op} {self.constant}"


def _arithmetic(op: str, a: Arg, b: Arg, tensors: set[fx.Node]) -> Replacement | None:
    a_tensor, b_tensor = a in tensors, b in tensors
    if a_tensor and b_tensor:
        binary = {"add": qat.Add, "sub": qat.Sub, "mul": qat.Mul}.get(op)
        if binary is None:
            return None  # tensor / tensor: a float island
        return Replacement(op, op, [a, b], binary)
    if a_tensor or b_tensor:
        constant = b if a_tensor else a
        if not isinstance(constant, (int, float)) or isinstance(constant, bool):
            return None  # a scalar known only at run time
        fn = ScalarOp(op, float(constant), reverse=b_tensor)
        x = a if a_tensor else b
        return Replacement(
            op, op, [x], lambda q: qat.Elementwise(fn, q, name=repr(fn)), "table lookup"
        )
    return None


# --- pooling, means, resizing, joins --------------------------------------------------

_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_POOL = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)
_INTERPOLATE = ("input", "size", "scale_factor", "mode", "align_corners")


def _options(bound: dict[str, Arg], names: Sequence[str]) -> dict[str, Arg]:
    return {k: bound[k] for k in names[1:] if k in bound}


def _pooling(target: Any, bound: dict[str, Arg]) -> Replacement | None:
    x = bound.get("input")
    if target is F.max_pool2d:
        if bound.get("return_indices"):
            return None
        opts = _options(bound, _MAX_POOL)
        return Replacement(
            "max_pool2d",
            "max_pool2d",
            [x],
            lambda q: qat.MaxPool2d(**opts, qconfig=q),
            "keeps scale",
            False,
        )
    if target is F.avg_pool2d:
        opts = _options(bound, _AVG_POOL)
        return Replacement(
            "avg_pool2d", "avg_pool2d", [x], lambda q: qat.AvgPool2d(**opts, qconfig=q)
        )
    if target is F.adaptive_avg_pool2d:
        size = bound["output_size"]
        return Replacement(
            "adaptive_avg_pool2d",
            "adaptive_avg_pool2d",
            [x],
            lambda q: qat.AdaptiveAvgPool2d(size, q),
        )
    return None


def _mean(bound: dict[str, Arg]) -> Replacement | None:
    dim, keepdim = bound.get("dim"), bool(bound.get("keepdim", False))
    if dim is None or bound.get("dtype") is not None:
        return None  # the mean of every element, or a dtype change: a float island
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else dim
    return Replacement("mean", "mean", [bound["input"]], lambda q: qat.Mean(dims, keepdim, q))


def _interpolate(bound: dict[str, Arg]) -> Replacement | None:
    opts = _options(bound, _INTERPOLATE)
    mode = opts.get("mode", "nearest")
    if mode not in ("nearest", "bilinear") or bound.get("antialias"):
        return None
    if not _constant(opts.get("scale_factor")):
        return None
    inputs = [bound["input"]]
    size = opts.get("size")
    if size is not None and not _constant(size):
        # A size read off another tensor (``x.shape[-2:]``): an argument at run time.
        inputs.append(opts.pop("size"))
    keeps = mode == "nearest"
    return Replacement(
        "interpolate",
        "interpolate",
        inputs,
        lambda q: qat.Interpolate(**opts, qconfig=q),
        "keeps scale" if keeps else "int8",
        not keeps,
    )


_CAT: set[Any] = {torch.cat, torch.concat, torch.concatenate}
_STACK: set[Any] = {torch.stack}


def _join(target: Any, bound: dict[str, Arg]) -> Replacement | None:
    tensors = bound.get("tensors")
    if not isinstance(tensors, (list, tuple)) or not all(_is_node(t) for t in tensors):
        return None
    dim = bound.get("dim", 0)
    if not isinstance(dim, int):
        return None
    if target in _CAT:
        return Replacement("cat", "cat", [list(tensors)], lambda q: qat.Cat(dim, q))
    return Replacement("stack", "stack", [list(tensors)], lambda q: qat.Stack(dim, q))


def match_call(node: fx.Node, tensors: set[fx.Node]) -> Replacement | None:
    """The QAT module for a call_function / call_method node on tensors, or ``None``
    (a shape op, an identity or a float island: see ``classify``)."""
    target, args, kwargs = node.target, list(node.args), dict(node.kwargs)
    if target in RELU:
        return Replacement("relu", "relu", [args[0]], lambda q: qat.ReLU(q), "keeps scale", False)
    if target in RELU6:
        return Replacement("relu6", "relu6", [args[0]], lambda q: qat.ReLU6(q))
    if target in _ELEMENTWISE:
        name, names = _ELEMENTWISE[target]
        return _elementwise(name, _bind(names, args, kwargs))
    for ops, op in ((ADD, "add"), (_SUB, "sub"), (_MUL, "mul"), (_DIV, "div")):
        if target in ops:
            if len(args) != 2 or kwargs.get("alpha", 1) != 1:
                return None
            return _arithmetic(op, args[0], args[1], tensors)
    if target is operator.neg or target == "neg":
        fn = ScalarOp("mul", -1.0)
        return Replacement(
            "neg", "neg", [args[0]], lambda q: qat.Elementwise(fn, q, name="neg"), "table lookup"
        )
    if target in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
        names = {F.max_pool2d: _MAX_POOL, F.avg_pool2d: _AVG_POOL}.get(
            target, ("input", "output_size")
        )
        return _pooling(target, _bind((*names, "return_indices"), args, kwargs))
    if target in (torch.mean, "mean"):
        return _mean(_bind(("input", "dim", "keepdim", "dtype"), args, kwargs))
    if target in (F.interpolate, F.upsample):
        return _interpolate(
            _bind((*_INTERPOLATE, "recompute_scale_factor", "antialias"), args, kwargs)
        )
    if target in _CAT or target in _STACK:
        return _join(target, _bind(("tensors", "dim"), args, kwargs))
    return None


def is_shape_op(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in SHAPE_FUNCTIONS) or (
        node.op == "call_method" and node.target in SHAPE_METHODS
    )


def is_identity(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in IDENTITY_FUNCTIONS


def gives_tensor_sequence(node: fx.Node) -> bool:
    return node.target in SEQUENCE_RESULTS


def gives_no_tensor(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in NOT_TENSOR_METHODS:
        return True
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) > 1
        and node.args[1] in NOT_TENSOR_ATTRIBUTES
    )
