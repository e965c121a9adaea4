"""The ONNX QDQ graph of an integer model, built from a recorded forward pass.

The integer model runs once on an example batch while forward hooks record, in call
order, each integer module and each shape operation on its activations; each becomes QDQ
ONNX (see ``hatcli.engine.export``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hatcli.errors import InputError
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.qtensor import QTensor

OPSET = 17
_I32 = torch.iinfo(torch.int32)


@dataclass
class _Val:
    """A recorded activation: its ONNX name, and its int8 scale (``None``: float)."""

    name: str
    scale: float | None = None
    # For a float value that hat dequantized: its scale and axis (for the agreement).
    out_scale: tuple[torch.Tensor, int | None] | None = None
    # For an int32 value (integer-op graphs): its per-channel scale and axis.
    int32_scale: tuple[torch.Tensor, int] | None = None


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
_FLOAT_LEAVES = (nn.Identity, nn.Dropout, nn.Flatten)


def functional_inputs(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], int]:
    """The tensors a ``QFunctional`` call combines, and ``cat``'s dim (0 for add/mul)."""
    if method == "cat":
        tensors = kwargs.get("tensors", args[0] if args else ())
        return list(tensors), int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    a = kwargs.get("a", args[0] if args else None)
    return [a, kwargs.get("b", args[1] if len(args) > 1 else None)], 0


class _Recorder(TorchFunctionMode):
    """Records the shape ops that the model's own forward code applies to activations."""

    def __init__(self, builder: QDQBuilder) -> None:
        super().__init__()
        self.builder = builder

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        b = self.builder
        if b.depth or b.busy:
            return out
        flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else [a])]
        src = next((a for a in flat if isinstance(a, torch.Tensor) and id(a) in b.values), None)
        if src is None or not isinstance(out, torch.Tensor | list | tuple):
            return out
        b.busy = True
        try:
            b.shape_op(func, src, args, kwargs, out)
        finally:
            b.busy = False
        return out


class QDQBuilder:
    """Builds a QDQ ONNX graph from an integer model by recording one forward pass."""

    def __init__(self, model: nn.Module, onnx: Any) -> None:
        self.model = model
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.values: dict[int, _Val] = {}
        self.keep: list[torch.Tensor] = []  # recorded tensors stay alive: ids stay unique
        self.depth = 0
        self.busy = False
        self.used: set[str] = set()
        self.dq_cache: dict[str, str] = {}
        self._zero8: str | None = None

    # -- graph helpers
    @property
    def zero8(self) -> str:
        """The shared int8 zero point (created on first use)."""
        if self._zero8 is None:
            self._zero8 = self.const("zero_int8", np.array(0, dtype=np.int8))
        return self._zero8

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

    def quantize(self, x: str, scale: float, name: str) -> str:
        s = self.const(f"{name}.scale", np.array(scale, dtype=np.float32))
        return self.node("QuantizeLinear", [x, s, self.zero8], f"{name}.q")

    def dequantize(self, v: _Val, what: str) -> str:
        if v.scale is None:
            raise InputError(f"{what} expects an int8 activation; its input is not quantized")
        if v.name not in self.dq_cache:
            s = self.const(f"{v.name}.scale", np.array(v.scale, dtype=np.float32))
            self.dq_cache[v.name] = self.node(
                "DequantizeLinear", [v.name, s, self.zero8], f"{v.name}.dq"
            )
        return self.dq_cache[v.name]

    def val_of(self, t: Any, what: str) -> _Val:
        v = self.values.get(id(t)) if isinstance(t, torch.Tensor) else None
        if v is None:
            raise InputError(f"{what}: its input does not come from the model input")
        return v

    def record(self, t: torch.Tensor, v: _Val) -> None:
        self.values[id(t)] = v
        self.keep.append(t)

    # -- recording
    def build(self, example: torch.Tensor) -> tuple[Any, list[tuple[torch.Tensor, int | None]]]:
        """The ONNX model, and the output scale (tensor, axis) of each output."""
        x = example.clone()
        self.used.add("input")
        self.record(x, _Val("input"))
        with self._hooks(), _Recorder(self):
            out = self.model(x)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        graph_outputs, scales = [], []
        for i, t in enumerate(outs):
            v = self.val_of(t, f"{type(self.model).__name__} output {i}")
            if v.scale is not None or t.dtype != torch.float32:
                raise InputError(
                    f"{type(self.model).__name__} output {i} is still quantized: "
                    "end the model with a DeQuantStub"
                )
            name = "output" if len(outs) == 1 else f"output_{i}"
            self.used.add(name)
            self.nodes.append(self.helper.make_node("Identity", [v.name], [name], name=name))
            shape = ["batch", *t.shape[1:]]
            graph_outputs.append(
                self.helper.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, shape)
            )
            if v.out_scale is not None:
                scales.append(v.out_scale)
        inp = self.helper.make_tensor_value_info(
            "input", self.onnx.TensorProto.FLOAT, ["batch", *example.shape[1:]]
        )
        graph = self.helper.make_graph(
            self.nodes, type(self.model).__name__, [inp], graph_outputs, self.inits
        )
        proto = self.helper.make_model(
            graph,
            opset_imports=[self.helper.make_opsetid("", OPSET)],
            producer_name="hat",
        )
        proto.ir_version = min(proto.ir_version, 8)
        return proto, scales

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        handles: list[Any] = []
        patched: list[tuple[nn.Module, str]] = []
        for path, mod in self.model.named_modules():
            if isinstance(mod, qnn.QFunctional):
                for method in ("add", "cat", "mul"):
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
            if self.depth == 0 and not self.busy and not self._supported(mod):
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
                self.busy = True
                try:
                    self.emit(path or "model", mod, [*args, *kwargs.values()], out)
                finally:
                    self.busy = False

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
                self.busy = True
                try:
                    self.emit_functional(path, mod, method, args, kwargs, out)
                finally:
                    self.busy = False
            return out

        return call

    @staticmethod
    def _supported(mod: nn.Module) -> bool:
        known = (
            qnn.QuantStub,
            qnn.DeQuantStub,
            qnn.Conv2d,  # ConvAdd2d and Linear too
            qnn.ReLU,
            qnn.ReLU6,
            qnn.AdaptiveAvgPool2d,
        )
        if isinstance(mod, known):
            return True
        if isinstance(mod, nn.Flatten):
            return mod.end_dim == -1
        return isinstance(mod, _FLOAT_LEAVES)

    # -- emitting ONNX for one recorded call
    def emit(self, path: str, mod: nn.Module, args: list[Any], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise InputError(f"cannot export {path} ({type(mod).__name__}): it returns no tensor")
        v = self.val_of(args[0] if args else None, f"{path} ({type(mod).__name__})")
        if isinstance(mod, qnn.QuantStub):
            if v.scale is not None:
                raise InputError(f"cannot export {path}: its input is quantized already")
            self.record(out, _Val(self.quantize(v.name, float(mod.scale), path), float(mod.scale)))
        elif isinstance(mod, qnn.DeQuantStub):
            if v.scale is None:
                self.record(out, v)
            else:
                name = self.dequantize(v, path)
                self.record(out, _Val(name, None, (torch.tensor(v.scale), None)))
        elif isinstance(mod, qnn.Linear):
            self._linear(path, mod, v, args[0], out)
        elif isinstance(mod, qnn.Conv2d):
            self._conv(path, mod, v, args, out)
        elif isinstance(mod, qnn.ReLU):
            y = self.node("Relu", [self.dequantize(v, path)], f"{path}.relu")
            self.record(out, _Val(self.quantize(y, v.scale, path), v.scale))  # type: ignore[arg-type]
        elif isinstance(mod, qnn.ReLU6):
            s_out = float(mod.output_scale)
            y = self._clamp(self.dequantize(v, path), mod.qmin, mod.qmax, s_out, path)
            self.record(out, _Val(self.quantize(y, s_out, path), s_out))
        elif isinstance(mod, qnn.AdaptiveAvgPool2d):
            self._pool(path, mod, v, args[0], out)
        elif isinstance(mod, nn.Flatten):
            shape = self.const(f"{path}.shape", np.array([0] * mod.start_dim + [-1]))
            self.record(out, _Val(self.node("Reshape", [v.name, shape], path), v.scale))
        elif isinstance(mod, _FLOAT_LEAVES):
            self.record(out, v)
        else:  # pragma: no cover - _pre_hook refuses these first
            raise InputError(f"cannot export {path} ({type(mod).__name__})")

    def _clamp(self, y: str, qmin: int, qmax: int, s_out: float, path: str) -> str:
        if qmin == 0 and qmax == 127:
            return self.node("Relu", [y], f"{path}.relu")
        if qmin <= -128 and qmax >= 127:
            return y
        lo = self.const(f"{path}.min", np.array(max(qmin, -128) * s_out, dtype=np.float32))
        hi = self.const(f"{path}.max", np.array(min(qmax, 127) * s_out, dtype=np.float32))
        return self.node("Clip", [y, lo, hi], f"{path}.clip")

    def _weights(
        self, path: str, mod: qnn.Conv2d, s_in: float, weight: torch.Tensor, axis: int
    ) -> tuple[str, str]:
        """Dequantized weight and bias: int8 per channel, int32 bias at ``s_in * s_w``."""
        w_scale = mod.weight_scale.double()
        acc_scale = s_in * w_scale
        bias = torch.round(mod.bias.double() / acc_scale).clamp(_I32.min, _I32.max)
        out_ch = w_scale.numel()
        w = self.const(f"{path}.weight", weight.cpu().numpy().astype(np.int8))
        ws = self.const(f"{path}.weight_scale", w_scale.float().cpu().numpy())
        wz = self.const(f"{path}.weight_zero_point", np.zeros(out_ch, dtype=np.int8))
        wf = self.node("DequantizeLinear", [w, ws, wz], f"{path}.weight.dq", axis=axis)
        b = self.const(f"{path}.bias", bias.to(torch.int32).cpu().numpy())
        bs = self.const(f"{path}.bias_scale", acc_scale.float().cpu().numpy())
        bz = self.const(f"{path}.bias_zero_point", np.zeros(out_ch, dtype=np.int32))
        bf = self.node("DequantizeLinear", [b, bs, bz], f"{path}.bias.dq", axis=0)
        return wf, bf

    def _finish(self, path: str, mod: qnn.Conv2d, y: str, out: torch.Tensor) -> None:
        if mod.output_scale is None:  # int32 output: hat dequantizes it per channel
            assert isinstance(out, QTensor)
            self.record(out, _Val(y, None, (out.q_scale.clone(), out.q_axis)))
            return
        s_out = float(mod.output_scale)
        y = self._clamp(y, mod.qmin, mod.qmax, s_out, path)
        self.record(out, _Val(self.quantize(y, s_out, path), s_out))

    def _conv(self, path: str, mod: qnn.Conv2d, v: _Val, args: list[Any], out: Any) -> None:
        x = self.dequantize(v, path)
        wf, bf = self._weights(path, mod, v.scale, mod.weight, 0)  # type: ignore[arg-type]
        kh, kw = mod.weight.shape[2:]
        ph, pw = mod.padding
        y = self.node(
            "Conv",
            [x, wf, bf],
            f"{path}.conv",
            kernel_shape=[kh, kw],
            strides=list(mod.stride),
            pads=[ph, pw, ph, pw],
            dilations=list(mod.dilation),
            group=mod.groups,
        )
        if isinstance(mod, qnn.ConvAdd2d):
            r = self.dequantize(self.val_of(args[1], f"{path} residual"), f"{path} residual")
            y = self.node("Add", [y, r], f"{path}.add")
        self._finish(path, mod, y, out)

    def _linear(
        self, path: str, mod: qnn.Linear, v: _Val, inp: torch.Tensor, out: torch.Tensor
    ) -> None:
        x = self.dequantize(v, path)
        if inp.dim() == 2:
            wf, bf = self._weights(path, mod, v.scale, mod.weight, 0)  # type: ignore[arg-type]
            y = self.node("Gemm", [x, wf, bf], f"{path}.gemm", transB=1)
        else:
            wt = mod.weight.t().contiguous()
            wf, bf = self._weights(path, mod, v.scale, wt, 1)  # type: ignore[arg-type]
            y = self.node("MatMul", [x, wf], f"{path}.matmul")
            y = self.node("Add", [y, bf], f"{path}.bias_add")
        self._finish(path, mod, y, out)

    def _pool(
        self, path: str, mod: qnn.AdaptiveAvgPool2d, v: _Val, inp: torch.Tensor, out: Any
    ) -> None:
        x = self.dequantize(v, path)
        h, w = inp.shape[-2:]
        oh, ow = out.shape[-2:]
        if (oh, ow) == (1, 1):
            y = self.node("GlobalAveragePool", [x], f"{path}.pool")
        else:
            k = [h // oh, w // ow]
            y = self.node("AveragePool", [x], f"{path}.pool", kernel_shape=k, strides=k)
        s_out = float(mod.output_scale)
        self.record(out, _Val(self.quantize(y, s_out, path), s_out))

    def emit_functional(
        self,
        path: str,
        mod: qnn.QFunctional,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: torch.Tensor,
    ) -> None:
        where = f"{path}.{method}"
        tensors, dim = functional_inputs(method, args, kwargs)
        inputs = [self.dequantize(self.val_of(t, where), where) for t in tensors]
        if method == "cat":
            y = self.node("Concat", inputs, where, axis=dim)
        else:
            y = self.node("Add" if method == "add" else "Mul", inputs, where)
        s_out = float(mod.output_scale)
        self.record(out, _Val(self.quantize(y, s_out, path), s_out))

    def shape_op(
        self,
        func: Callable[..., Any],
        src: torch.Tensor,
        args: Any,
        kwargs: dict[str, Any],
        out: torch.Tensor,
    ) -> None:
        """A torch op in the model's own forward code applied to a recorded activation."""
        v = self.values[id(src)]
        op = getattr(func, "__name__", str(func))
        if not isinstance(out, torch.Tensor) or args[0] is not src:
            pass  # several outputs (split, chunk) or an activation as a later argument
        elif func in _IDENTITIES and out.dtype == src.dtype:
            self.record(out, v)
            return
        elif func in _RESHAPES:
            if out.dim() == 0 or src.dim() == 0 or out.shape[0] != src.shape[0]:
                raise InputError(
                    f"cannot export {op} in {type(self.model).__name__}.forward: it changes "
                    "the batch dimension"
                )
            shape = self.const(f"{v.name}.{op}.shape", np.array([0, *out.shape[1:]]))
            self.record(out, _Val(self.node("Reshape", [v.name, shape], f"{v.name}.{op}"), v.scale))
            return
        elif func in _PERMUTES:
            rank = src.dim()
            if func in (torch.Tensor.transpose, torch.transpose):
                d0, d1 = (int(a) % rank for a in args[1:3])
                perm = list(range(rank))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            else:
                dims = list(args[1:]) or list(kwargs.get("dims", ()))
                if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                    dims = list(dims[0])
                perm = [int(d) % rank for d in dims]
            if perm[0] != 0:
                raise InputError(
                    f"cannot export {op} in {type(self.model).__name__}.forward: it moves "
                    "the batch dimension"
                )
            name = self.node("Transpose", [v.name], f"{v.name}.{op}", perm=perm)
            self.record(out, _Val(name, v.scale))
            return
        raise InputError(
            f"cannot export torch.{op} in {type(self.model).__name__}.forward: no ONNX form "
            "for this operation on a quantized activation (use a quantizable module)"
        )
