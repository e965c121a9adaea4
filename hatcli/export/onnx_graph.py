"""An ONNX graph under construction, and what its emitters are given.

Every ONNX form of an integer model (QDQ, integer ops) records one forward pass into a
``Graph`` (see ``onnx_record``): each recorded module call is a ``Call`` handed to the
emitter that a format's table gives for the module's exact type. Emitters are plain
functions of ``(graph, call)``; what a format must remember between calls (a shared
constant, a value it dequantized already) it keeps with ``Graph.once``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from hatcli.errors import InputError
from hatcli.export.result import OutputScale
from hatcli.quant.nn import quantized as qnn

OPSET = 17

# Covariant: a Call is frozen, so a Call[ConvAdd2d] is a Call[Conv2d].
M = TypeVar("M", bound=nn.Module, covariant=True)


@dataclass
class Value:
    """A recorded activation: its ONNX name, and its int8 scale (``None``: not int8)."""

    name: str
    scale: float | None = None
    # For a float value that hat dequantized: its scale and axis (for the agreement).
    out_scale: OutputScale | None = None
    # For an int32 value (integer-op graphs): its per-channel scale and axis.
    int32_scale: tuple[torch.Tensor, int] | None = None

    @property
    def quantized(self) -> bool:
        """int8, or int32 with a scale per channel (else float)."""
        return self.scale is not None or self.int32_scale is not None


@dataclass(frozen=True)
class Call(Generic[M]):
    """One recorded call of a module: its path in the model, the module, its tensor
    arguments (positional, then keyword) and its output."""

    path: str
    module: M
    args: list[Any]
    out: torch.Tensor

    @property
    def what(self) -> str:
        return f"{self.path} ({type(self.module).__name__})"

    @property
    def input(self) -> Any:
        return self.args[0] if self.args else None


@dataclass(frozen=True)
class FunctionalCall:
    """One recorded ``QFunctional`` call (``add``, ``cat`` or ``mul``): the tensors it
    combines and, for ``cat``, the dimension."""

    path: str
    module: Any  # hatcli.quant.nn.quantized.QFunctional
    method: str
    tensors: list[Any]
    dim: int
    out: torch.Tensor

    @property
    def where(self) -> str:
        return f"{self.path}.{self.method}"


@dataclass(frozen=True)
class TorchCall:
    """One torch function that the model's own forward code applied to a recorded value
    (a shape op, or a float function of a float island): ``func(*args, **kwargs)``
    returned ``out``; ``source`` is its first argument that is a recorded value."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any
    source: torch.Tensor
    where: str  # the forward code it is in, for messages

    @property
    def op(self) -> str:
        return str(getattr(self.func, "__name__", self.func))

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Argument ``name``, passed by keyword or as positional ``i``."""
        return self.kwargs.get(name, self.args[i] if len(self.args) > i else default)

    def refuse(self, why: str) -> InputError:
        return InputError(f"cannot export torch.{self.op} in {self.where}: {why}")


class Graph:
    """ONNX nodes and initializers under unique names, and the ``Value`` each recorded
    torch tensor became."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.types = onnx.TensorProto
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used: set[str] = set()
        self.values: dict[int, Value] = {}
        self.keep: list[torch.Tensor] = []  # recorded tensors stay alive: ids stay unique
        self.memo: dict[str, str] = {}

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = self.unique(name)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def nodes_out(self, op: str, inputs: list[str], names: list[str], **attrs: Any) -> list[str]:
        """A node with one output per name in ``names``."""
        outs = [self.unique(n) for n in names]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    def once(self, key: str, make: Callable[[], str]) -> str:
        """The name ``make()`` gave the first time ``key`` was asked for."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def record(self, t: torch.Tensor, v: Value) -> None:
        self.values[id(t)] = v
        self.keep.append(t)

    def recorded(self, t: Any) -> bool:
        """Whether ``t`` is a recorded value (else a constant: a parameter, a buffer)."""
        return isinstance(t, torch.Tensor) and id(t) in self.values

    def value(self, t: Any, what: str) -> Value:
        """The recorded value of ``t``; an InputError when ``t`` was not recorded."""
        v = self.values.get(id(t)) if isinstance(t, torch.Tensor) else None
        if v is None:
            raise InputError(f"{what}: its input does not come from the model input")
        return v


Emitter = Callable[[Graph, Call[Any]], None]
"""Adds the ONNX form of one module call to the graph and records its output."""

FunctionalEmitter = Callable[[Graph, FunctionalCall], None]
"""Adds the ONNX form of one ``QFunctional`` call to the graph and records its output."""

TorchEmitter = Callable[[Graph, TorchCall], None]
"""Adds the ONNX form of one torch function call to the graph and records its output."""


def same_value(g: Graph, call: Call[nn.Module]) -> None:
    """A module that leaves its input as it is in eval mode (Identity, Dropout)."""
    g.record(call.out, g.value(call.input, call.what))


def flatten(g: Graph, call: Call[nn.Flatten]) -> None:
    if call.module.end_dim != -1:
        raise InputError(f"cannot export {call.what}: no ONNX form for this module")
    v = g.value(call.input, call.what)
    shape = g.const(f"{call.path}.shape", np.array([0] * call.module.start_dim + [-1]))
    g.record(call.out, Value(g.node("Reshape", [v.name, shape], call.path), v.scale))


LAYOUT_EMITTERS: dict[type[nn.Module], Emitter] = {
    nn.Identity: same_value,
    nn.Dropout: same_value,
    qnn.Dropout: same_value,
    nn.Flatten: flatten,
}
"""Modules an integer model may hold that only move or keep values; every ONNX form of
an integer model includes these."""
