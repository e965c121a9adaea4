"""Recording one forward pass of an integer model into an ONNX graph.

Forward hooks see, in call order, each integer module and each float leaf module; a
``TorchFunctionMode`` sees the torch functions that the model's own forward code (an
eager ``forward`` or a ``GraphModule``'s generated code) applies to recorded values:
shape operations (``onnx_shape``: view, permute, indexing, chunk, ...) and the float
functions of a float island (``onnx_float_ops``); calls that give no tensor (``size()``,
``.shape``) are not values and pass. Each module call goes to the emitter a format's
table gives for the module's exact type, so a new op is one entry in that table; a
module with no entry is refused before it runs, by its path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hatcli.errors import InputError
from hatcli.export.onnx_float_ops import FLOAT_FUNCTIONS
from hatcli.export.onnx_graph import (
    OPSET,
    Call,
    Emitter,
    FunctionalCall,
    FunctionalEmitter,
    Graph,
    TorchCall,
    Value,
)
from hatcli.export.onnx_shape import SHAPE_OPS
from hatcli.export.result import OutputScale
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.quantized.base import IntegerModule


def record_graph(
    model: nn.Module,
    onnx: Any,
    example: torch.Tensor,
    emitters: Mapping[type[nn.Module], Emitter],
    functional: Mapping[str, FunctionalEmitter],
) -> tuple[Any, list[OutputScale]]:
    """The ONNX model of ``model`` run on ``example``, and the output scale of each
    output that hat dequantized. ``emitters`` maps module types to their emitters,
    ``functional`` maps ``QFunctional`` methods to theirs."""
    return _Recording(model, Graph(onnx), emitters, functional).run(example)


def _functional_inputs(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], int]:
    """The tensors a ``QFunctional`` call combines, and the dim of ``cat``/``stack`` (0
    for the others)."""
    if method in ("cat", "stack"):
        tensors = kwargs.get("tensors", args[0] if args else ())
        return list(tensors), int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    a = kwargs.get("a", args[0] if args else None)
    return [a, kwargs.get("b", args[1] if len(args) > 1 else None)], 0


class _TorchOps(TorchFunctionMode):
    """Passes the torch functions called outside any hooked module to the recording."""

    def __init__(self, recording: _Recording) -> None:
        super().__init__()
        self.recording = recording

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        r = self.recording
        if r.depth or r.busy:
            return out
        flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else [a])]
        values = r.graph.values
        src = next((a for a in flat if isinstance(a, torch.Tensor) and id(a) in values), None)
        if src is None or not _gives_tensors(out):
            return out
        with r.emitting():
            r.torch_op(TorchCall(func, tuple(args), kwargs, out, src, r.forward))
        return out


def _gives_tensors(out: Any) -> bool:
    """Whether a call's result is a value to record (not a size, a dim, a dtype)."""
    if isinstance(out, (list, tuple)):
        return any(isinstance(t, torch.Tensor) for t in out)
    return isinstance(out, torch.Tensor)


class _Recording:
    """One forward pass of ``model`` with its calls turned into graph nodes."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        emitters: Mapping[type[nn.Module], Emitter],
        functional: Mapping[str, FunctionalEmitter],
    ) -> None:
        self.model = model
        self.graph = graph
        self.emitters = emitters
        self.functional = functional
        self.depth = 0  # > 0 inside a hooked module: what it does inside is its own
        self.busy = False  # an emitter is running: its own torch calls are not recorded

    @contextmanager
    def emitting(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False

    def run(self, example: torch.Tensor) -> tuple[Any, list[OutputScale]]:
        g = self.graph
        x = example.clone()
        g.used.add("input")
        g.record(x, Value("input"))
        with self._hooks(), _TorchOps(self):
            out = self.model(x)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        name_of_model = type(self.model).__name__
        graph_outputs, scales = [], []
        for i, t in enumerate(outs):
            v = g.value(t, f"{name_of_model} output {i}")
            if v.scale is not None or t.dtype != torch.float32:
                raise InputError(
                    f"{name_of_model} output {i} is still quantized: end the model with a "
                    "DeQuantStub"
                )
            name = "output" if len(outs) == 1 else f"output_{i}"
            g.used.add(name)
            g.nodes.append(g.helper.make_node("Identity", [v.name], [name], name=name))
            shape = ["batch", *t.shape[1:]]
            graph_outputs.append(g.helper.make_tensor_value_info(name, g.types.FLOAT, shape))
            if v.out_scale is not None:
                scales.append(v.out_scale)
        inp = g.helper.make_tensor_value_info("input", g.types.FLOAT, ["batch", *example.shape[1:]])
        graph = g.helper.make_graph(g.nodes, name_of_model, [inp], graph_outputs, g.inits)
        proto = g.helper.make_model(
            graph, opset_imports=[g.helper.make_opsetid("", OPSET)], producer_name="hat"
        )
        proto.ir_version = min(proto.ir_version, 8)
        return proto, scales

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        handles: list[Any] = []
        patched: list[tuple[nn.Module, str]] = []
        for path, mod in self.model.named_modules():
            if isinstance(mod, qnn.QFunctional):
                for method in self.functional:
                    setattr(mod, method, self._wrap_functional(path, mod, method))
                    patched.append((mod, method))
            elif isinstance(mod, IntegerModule) or not any(True for _ in mod.children()):
                handles.append(mod.register_forward_pre_hook(self._pre_hook(path)))
                handles.append(mod.register_forward_hook(self._post_hook(path), with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for mod, method in patched:
                delattr(mod, method)

    def _pre_hook(self, path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any) -> None:
            if self.depth == 0 and not self.busy and type(mod) not in self.emitters:
                raise InputError(
                    f"cannot export {path or '(model)'} ({type(mod).__name__}): "
                    "no ONNX form for this module"
                )
            self.depth += 1

        return hook

    def _post_hook(self, path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            self.depth -= 1
            if self.depth == 0 and not self.busy:
                call = Call(path or "model", mod, [*args, *kwargs.values()], out)
                if not isinstance(out, torch.Tensor):
                    raise InputError(f"cannot export {call.what}: it returns no tensor")
                with self.emitting():
                    self.emitters[type(mod)](self.graph, call)

        return hook

    def _wrap_functional(self, path: str, mod: nn.Module, method: str) -> Callable[..., Any]:
        orig = getattr(type(mod), method).__get__(mod)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            try:
                out = orig(*args, **kwargs)
            finally:
                self.depth -= 1
            if self.depth == 0 and not self.busy:
                tensors, dim = _functional_inputs(method, args, kwargs)
                with self.emitting():
                    self.functional[method](
                        self.graph, FunctionalCall(path, mod, method, tensors, dim, out)
                    )
            return out

        return call

    @property
    def forward(self) -> str:
        return f"{type(self.model).__name__}.forward"

    def torch_op(self, call: TorchCall) -> None:
        """A torch function in the model's own forward code applied to a recorded value:
        a shape op on any value, or a float island's function of float values."""
        v = self.graph.values[id(call.source)]
        emitter = SHAPE_OPS.get(call.func)
        if emitter is None and not v.quantized:
            emitter = FLOAT_FUNCTIONS.get(call.func)
            if emitter is None:
                raise call.refuse("no ONNX form for this float function")
        if emitter is None:
            raise call.refuse(
                "no ONNX form for this operation on a quantized activation (use a "
                "quantizable module)"
            )
        emitter(self.graph, call)
