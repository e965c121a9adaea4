"""Symbolic tracing of a float model, remembering in which module each op was called.

torch.fx's symbolic tracing runs ``forward`` once on proxies and records every call:
no example input, no compiler, and the GraphModule it returns keeps the model's module
names (``layer1.0.conv1`` stays ``layer1.0.conv1``). Its limit is data-dependent Python:
``if x.sum() > 0``, loops over a tensor's values. Those raise here as a ``TraceFailure``
naming the module being traced and the line of the model's code, so the user can list
that module as a leaf.

The model is traced in eval mode: code that branches on ``self.training`` (stochastic
depth, functional dropout) is recorded in its eval branch, as torch.ao's FX mode does.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

import hatcli
import hatcli.nn as float_nn
from hatcli.quant import stubs

SCOPE = "hat_scope"
"""``node.meta`` key: the dotted name of the module whose forward made the node."""

_HAT_LEAVES: tuple[type[nn.Module], ...] = (
    float_nn.ConvBN2d,
    float_nn.LinearReLU,
    stubs.QuantStub,
    stubs.DeQuantStub,
)
_TORCH_DIR = Path(torch.__file__).parent
_HAT_DIR = Path(hatcli.__file__).parent


class TraceFailure(Exception):
    """The model could not be traced; the message names the module and the line."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(message)
        self.module = module


class ScopedTracer(fx.Tracer):
    """An fx Tracer that records each node's calling module and treats the modules
    named in ``leaves`` (and hat's own blocks) as single calls."""

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaves = set(leaves)
        self._scopes: list[str] = [""]  # (fx's Tracer has a ``scope`` of its own)
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves or isinstance(m, _HAT_LEAVES):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        name = self.path_of_module(m)
        self._scopes.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module whose code failed
                self.failed_in = name
            raise
        finally:
            self._scopes.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        # A leaf's own call_module node belongs to its parent; everything else to the
        # innermost module being traced.
        scope = self._scopes[-2] if node.op == "call_module" else self._scopes[-1]
        node.meta[SCOPE] = scope
        return node


def trace(model: nn.Module, leaves: Iterable[str] = ()) -> fx.GraphModule:
    """``model`` traced in eval mode (its training flag is restored), as a GraphModule
    whose submodules keep their names."""
    tracer = ScopedTracer(leaves)
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or ""
        raise TraceFailure(where, _describe(exc, where, model)) from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.train(was_training)
    return gm


def _describe(exc: Exception, module: str, model: nn.Module) -> str:
    where = module or "<model>"
    kind = type(model.get_submodule(module)).__name__ if module else type(model).__name__
    frame = _model_frame(exc)
    line = f" at {frame}" if frame else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot trace {where} ({kind}){line}: {reason}"


def _model_frame(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of the model's own code."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if _TORCH_DIR in path.parents or _HAT_DIR in path.parents:
            continue
        found = f"{frame.filename}:{frame.lineno}"
    return found
