"""What each layer computed in one forward pass: forward hooks on its module (or, for a
traced function island, the fx node's value), its inputs and outputs per call.

Values are copied as they come out (plain float tensors; an integer model's ``QTensor``
is dequantized and its scale kept), so code that later changes a tensor in place does
not change what was recorded. The storages of each call's inputs and outputs are kept
too: which layer reads which layer's output is how the data flows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from hatcli.analyze.layers import Layer
from hatcli.quant.qat_tensor import plain
from hatcli.quant.qtensor import QTensor


@dataclass
class Value:
    """One recorded tensor: float values, and the integer scale when it was a QTensor."""

    data: torch.Tensor
    scale: torch.Tensor | None = None
    axis: int | None = None


@dataclass
class Call:
    """One call of a layer: its arguments (as recorded) and its tensor output."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Value | None
    reads: set[int] = field(default_factory=set)  # storages of its tensor inputs
    writes: set[int] = field(default_factory=set)  # storages of its tensor outputs
    input_scale: float | None = None  # of its first input, when quantized per tensor


def _storage(t: torch.Tensor) -> int:
    return int(plain(t).untyped_storage().data_ptr()) if t.numel() else 0


def tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []


def input_scale(args: Any) -> float | None:
    """The per-tensor scale of the first tensor in ``args`` (a QTensor or a QATTensor)."""
    found = tensors(args)
    scale = getattr(found[0], "q_scale", None) if found else None
    return float(scale) if isinstance(scale, torch.Tensor) and scale.dim() == 0 else None


def to_value(t: torch.Tensor) -> Value:
    """A recorded copy of ``t`` as float values."""
    if isinstance(t, QTensor):
        return Value(t.dequantize().detach().clone(), t.q_scale.detach().clone(), t.q_axis)
    return Value(plain(t).detach().float().clone())


def _copy(obj: Any) -> Any:
    if isinstance(obj, QTensor):
        return obj  # an integer model's inputs are not re-run
    if isinstance(obj, torch.Tensor):
        return plain(obj).detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    return obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    found = tensors(obj)
    return found[0] if found else None


class Recorder:
    """Records every call of the given layers while active (``with recorder.active():``)."""

    def __init__(self, model: nn.Module, layers: list[Layer], keep_inputs: bool) -> None:
        self.model = model
        self.layers = layers
        self.keep_inputs = keep_inputs
        self.calls: dict[str, list[Call]] = {}
        self.order: list[str] = []
        self._nodes = {layer.node: layer.name for layer in layers if layer.node is not None}
        # The pass's outputs stay alive until the next one, so no later tensor can take
        # their memory: a storage then names one tensor's data (and its views).
        self._alive: list[Any] = []

    def _module_of(self, layer: Layer) -> nn.Module | None:
        if layer.node is not None:
            return None
        try:
            return self.model.get_submodule(layer.name)
        except AttributeError:
            return None

    def record(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        tensor = first_tensor(out)
        call = Call(
            _copy(args) if self.keep_inputs else (),
            _copy(kwargs) if self.keep_inputs else {},
            to_value(tensor) if tensor is not None else None,
            {_storage(t) for t in tensors((args, kwargs))} - {0},
            {_storage(t) for t in tensors(out)} - {0},
            input_scale(args),
        )
        self._alive.append(out)
        if name not in self.calls:
            self.order.append(name)
        self.calls.setdefault(name, []).append(call)

    def reset(self) -> None:
        self.calls = {}
        self.order = []
        self._alive = []

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = []
        for layer in self.layers:
            module = self._module_of(layer)
            if module is None:
                continue

            def hook(
                mod: nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                out: Any,
                name: str = layer.name,
            ) -> None:
                self.record(name, args, kwargs, out)

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, inputs: torch.Tensor) -> Any:
        """The model's output on ``inputs``, recording the layers' calls."""
        self.reset()
        with self.active():
            if self._nodes and isinstance(self.model, fx.GraphModule):
                return _NodeRecorder(self.model, self).run(inputs)
            return self.model(inputs)


class _NodeRecorder(fx.Interpreter):
    """Runs a GraphModule node by node, recording the traced function islands."""

    def __init__(self, gm: fx.GraphModule, recorder: Recorder) -> None:
        super().__init__(gm)
        self.recorder = recorder

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        name = self.recorder._nodes.get(n.name)
        if name is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.recorder.record(name, tuple(args), dict(kwargs), out)
        return out
