"""Recording one forward pass of an integer model into an ONNX graph.

Forward hooks see, in call order, each integer module and each float leaf module; a
``TorchFunctionMode`` sees the shape operations (view, flatten, permute, ...) that the
model's own forward code applies to recorded activations. Each module call goes to the
emitter a format's table gives for the module's exact type, so a new op is one entry
in that table; a module with no entry is refused before it runs, by its path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hatcli.errors import InputError
from hatcli.export.onnx_graph import (
    OPSET,
    Call,
    Emitter,
    FunctionalCall,
    FunctionalEmitter,
    Graph,
    Value,
)
from hatcli.export.result import OutputScale
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.quantized.base import IntegerModule

_RESHAPES = {
    torch.Tensor.view,
    torch.Tensor.reshape,
    torch.reshape,
    torch.Tensor.flatten,
    torch.flatten,
    torch.Tensor.squeeze,
    torch.squeeze,
    torch.Tensor.unsqueeze,
    torch.unsqueeze,
}
_PERMUTES = {torch.Tensor.permute, torch.permute, torch.Tensor.transpose, torch.transpose}
_IDENTITIES = {
    torch.Tensor.contiguous,
    torch.Tensor.clone,
    torch.Tensor.detach,
    torch.Tensor.cpu,
    torch.Tensor.to,
}


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
    """The tensors a ``QFunctional`` call combines, and ``cat``'s dim (0 for add/mul)."""
    if method == "cat":
        tensors = kwargs.get("tensors", args[0] if args else ())
        return list(tensors), int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    a = kwargs.get("a", args[0] if args else None)
    return [a, kwargs.get("b", args[1] if len(args) > 1 else None)], 0


class _ShapeOps(TorchFunctionMode):
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
        if src is None or not isinstance(out, torch.Tensor | list | tuple):
            return out
        with r.emitting():
            r.shape_op(func, src, args, kwargs, out)
        return out


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
        with self._hooks(), _ShapeOps(self):
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

    def shape_op(
        self,
        func: Callable[..., Any],
        src: torch.Tensor,
        args: Any,
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        """A torch op in the model's own forward code applied to a recorded activation."""
        g = self.graph
        v = g.values[id(src)]
        op = getattr(func, "__name__", str(func))
        forward = f"{type(self.model).__name__}.forward"
        if not isinstance(out, torch.Tensor) or args[0] is not src:
            pass  # several outputs (split, chunk) or an activation as a later argument
        elif func in _IDENTITIES and out.dtype == src.dtype:
            g.record(out, v)
            return
        elif func in _RESHAPES:
            if out.dim() == 0 or src.dim() == 0 or out.shape[0] != src.shape[0]:
                raise InputError(f"cannot export {op} in {forward}: it changes the batch dimension")
            shape = g.const(f"{v.name}.{op}.shape", np.array([0, *out.shape[1:]]))
            g.record(out, Value(g.node("Reshape", [v.name, shape], f"{v.name}.{op}"), v.scale))
            return
        elif func in _PERMUTES:
            perm = _permutation(func, src.dim(), args, kwargs)
            if perm[0] != 0:
                raise InputError(f"cannot export {op} in {forward}: it moves the batch dimension")
            name = g.node("Transpose", [v.name], f"{v.name}.{op}", perm=perm)
            g.record(out, Value(name, v.scale))
            return
        raise InputError(
            f"cannot export torch.{op} in {forward}: no ONNX form for this operation on a "
            "quantized activation (use a quantizable module)"
        )


def _permutation(
    func: Callable[..., Any], rank: int, args: Any, kwargs: dict[str, Any]
) -> list[int]:
    """The dimension order a ``permute`` or ``transpose`` call gives."""
    if func in (torch.Tensor.transpose, torch.transpose):
        d0, d1 = (int(a) % rank for a in args[1:3])
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    dims = list(args[1:]) or list(kwargs.get("dims", ()))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    return [int(d) % rank for d in dims]
