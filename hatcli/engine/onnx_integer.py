"""The ONNX integer-op graph of an integer model: the same integers, computed the same way.

Recorded like the QDQ graph (see ``hatcli.engine.onnx_qdq``), but activations stay
integers. Each int8 value ``q`` travels as the uint8 ``q + 128`` (zero point 128, and the
weights likewise): ONNX Runtime's uint8 x uint8 ``ConvInteger`` is ~4x faster than its
int8 one, and zero points keep the products exact. ``ConvInteger`` / ``MatMulInteger``
accumulate in int32, the int32 bias is added in int32, and requantization is hat's own:
``Cast`` to float64, ``Mul`` by the multiplier ``m / 2**shift`` (exact, since the
multipliers are chosen so that every product stays below 2**52), ``Round`` (half to
even), ``Clip``, back to uint8. Quantizing the input repeats torch's fake-quantize kernel
(float32 ``x * (1 / scale)``, rounded half to even); dequantizing multiplies as
``QTensor`` does. ONNX Runtime's results are therefore the integer model's, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hatcli.engine.onnx_qdq import _FLOAT_LEAVES, QDQBuilder, _Val, functional_inputs
from hatcli.errors import InputError
from hatcli.quant.nn import quantized as qnn
from hatcli.quant.qtensor import QTensor

ZERO_POINT = 128


def _multiplier(m: torch.Tensor, shift: torch.Tensor, shape: list[int]) -> np.ndarray:
    """``m / 2**shift`` in float64 (exact: a power-of-two scaling), reshaped to broadcast."""
    scale = 1.0 / torch.bitwise_left_shift(torch.ones_like(shift), shift).to(torch.float64)
    return (m.to(torch.float64) * scale).reshape(shape).cpu().numpy()


class IntegerOpsBuilder(QDQBuilder):
    """Builds the integer-op ONNX graph of an integer model by recording one forward pass."""

    def __init__(self, model: nn.Module, onnx: Any) -> None:
        super().__init__(model, onnx)
        self.types = onnx.TensorProto

    # -- integer helpers
    def cast(self, x: str, to: int, name: str) -> str:
        return self.node("Cast", [x], f"{name}.cast", to=to)

    def centred(self, x: str, to: int, name: str) -> str:
        """A uint8 activation as its int8 value ``q``, in type ``to`` (exact)."""
        dtype = np.float64 if to == self.types.DOUBLE else np.int32
        zp = self.const(f"{name}.zero_point", np.array(ZERO_POINT, dtype=dtype))
        return self.node("Sub", [self.cast(x, to, name), zp], f"{name}.centred")

    def to_uint8(self, ints: str, dtype: type, qmin: int, qmax: int, path: str) -> str:
        """Integer values (in a float type) clamped to [qmin, qmax], as uint8 ``q + 128``."""
        zp = self.const(f"{path}.zero_point", np.array(ZERO_POINT, dtype=dtype))
        lo = self.const(f"{path}.qmin", np.array(qmin + ZERO_POINT, dtype=dtype))
        hi = self.const(f"{path}.qmax", np.array(qmax + ZERO_POINT, dtype=dtype))
        shifted = self.node("Add", [ints, zp], f"{path}.shift")
        clipped = self.node("Clip", [shifted, lo, hi], f"{path}.clip")
        return self.cast(clipped, self.types.UINT8, f"{path}.uint8")

    def requantize(
        self, terms: list[tuple[str, np.ndarray, bool]], qmin: int, qmax: int, path: str
    ) -> str:
        """``clamp(round(sum(x_i * M_i)), qmin, qmax)`` as ``requantize`` computes it, as a
        uint8 activation. A term flagged ``True`` is a uint8 activation, the others int32."""
        acc = None
        for i, (x, mult, is_activation) in enumerate(terms):
            name = f"{path}.x{i}"
            if is_activation:
                xd = self.centred(x, self.types.DOUBLE, name)
            else:
                xd = self.cast(x, self.types.DOUBLE, name)
            t = self.node("Mul", [xd, self.const(f"{path}.multiplier{i}", mult)], f"{path}.mul{i}")
            acc = t if acc is None else self.node("Add", [acc, t], f"{path}.sum")
        assert acc is not None
        rounded = self.node("Round", [acc], f"{path}.round")
        return self.to_uint8(rounded, np.float64, qmin, qmax, path)

    def activation(self, t: Any, what: str) -> _Val:
        v = self.val_of(t, what)
        if v.scale is None or v.int32_scale is not None:
            raise InputError(f"{what} expects an int8 activation; its input is not one")
        return v

    def weight(self, path: str, w: torch.Tensor) -> tuple[str, str]:
        """An int8 weight as uint8 ``w + 128`` and its zero point."""
        u8 = (w.to(torch.int16) + ZERO_POINT).to(torch.uint8).cpu().numpy()
        return self.const(f"{path}.weight", u8), self.const(
            f"{path}.weight_zero_point", np.array(ZERO_POINT, dtype=np.uint8)
        )

    # -- emitting
    def emit(self, path: str, mod: nn.Module, args: list[Any], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise InputError(f"cannot export {path} ({type(mod).__name__}): it returns no tensor")
        what = f"{path} ({type(mod).__name__})"
        if isinstance(mod, qnn.QuantStub):
            self._quant_stub(path, mod, self.val_of(args[0] if args else None, what), out)
        elif isinstance(mod, qnn.DeQuantStub):
            self._dequant_stub(path, self.val_of(args[0] if args else None, what), out)
        elif isinstance(mod, qnn.Linear):
            self._linear(path, mod, self.activation(args[0], what), args[0], out)
        elif isinstance(mod, qnn.Conv2d):
            self._conv(path, mod, self.activation(args[0], what), args, out)
        elif isinstance(mod, qnn.ReLU):
            v = self.activation(args[0], what)
            lo = self.const(f"{path}.min", np.array(ZERO_POINT, dtype=np.uint8))
            hi = self.const(f"{path}.max", np.array(127 + ZERO_POINT, dtype=np.uint8))
            self.record(out, _Val(self.node("Clip", [v.name, lo, hi], f"{path}.relu"), v.scale))
        elif isinstance(mod, qnn.ReLU6):
            v = self.activation(args[0], what)
            m, shift = mod.multiplier(v.scale)  # type: ignore[arg-type]
            terms = [(v.name, _multiplier(m, shift, []), True)]
            q = self.requantize(terms, mod.qmin, mod.qmax, path)
            self.record(out, _Val(q, float(mod.output_scale)))
        elif isinstance(mod, qnn.AdaptiveAvgPool2d):
            self._pool(path, mod, self.activation(args[0], what), args[0], out)
        elif isinstance(mod, (nn.Flatten, *_FLOAT_LEAVES)):
            super().emit(path, mod, args, out)
        else:  # pragma: no cover - _pre_hook refuses these first
            raise InputError(f"cannot export {what}")

    def _quant_stub(self, path: str, mod: qnn.QuantStub, v: _Val, out: torch.Tensor) -> None:
        if v.scale is not None:
            raise InputError(f"cannot export {path}: its input is quantized already")
        scale = np.float32(mod.scale.item())
        inv = self.const(f"{path}.inv_scale", np.array(np.float32(1.0) / scale, dtype=np.float32))
        y = self.node("Round", [self.node("Mul", [v.name, inv], f"{path}.mul")], f"{path}.round")
        self.record(out, _Val(self.to_uint8(y, np.float32, -128, 127, path), float(scale)))

    def _dequant_stub(self, path: str, v: _Val, out: torch.Tensor) -> None:
        if v.int32_scale is not None:  # int32 with a per-channel float64 scale
            scale, axis = v.int32_scale
            shape = [1] * out.dim()
            shape[axis] = -1
            s = self.const(f"{path}.scale", scale.double().reshape(shape).cpu().numpy())
            ints = self.cast(v.name, self.types.DOUBLE, path)
            agreement_scale: tuple[torch.Tensor, int | None] = (scale.clone(), axis)
        elif v.scale is not None:
            s = self.const(f"{path}.scale", np.array(v.scale, dtype=np.float64))
            ints = self.centred(v.name, self.types.DOUBLE, path)
            agreement_scale = (torch.tensor(v.scale), None)
        else:
            self.record(out, v)
            return
        y = self.cast(self.node("Mul", [ints, s], f"{path}.mul"), self.types.FLOAT, f"{path}.f")
        self.record(out, _Val(y, None, agreement_scale))

    def _accumulated(
        self,
        path: str,
        mod: qnn.Conv2d,
        acc: str,
        out: Any,
        shape: list[int],
        scales: tuple[float, ...],
        residual: _Val | None = None,
    ) -> None:
        """Add the int32 bias, then requantize (or keep int32 with a per-channel scale);
        the integers are the module's own (``_params`` of these input scales)."""
        p = mod._params(*scales)
        bias = self.const(f"{path}.bias", p.bias.reshape(shape).cpu().numpy().astype(np.int32))
        acc = self.node("Add", [acc, bias], f"{path}.bias_add")
        if p.out_scale is not None:
            assert isinstance(out, QTensor) and out.q_axis is not None
            self.record(out, _Val(acc, None, int32_scale=(p.out_scale.clone(), out.q_axis)))
            return
        assert p.shift is not None
        terms = [(acc, _multiplier(p.mults[0], p.shift, shape), False)]
        if residual is not None:
            terms.append((residual.name, _multiplier(p.mults[1], p.shift, shape), True))
        q = self.requantize(terms, mod.qmin, mod.qmax, path)
        self.record(out, _Val(q, float(mod.output_scale)))  # type: ignore[arg-type]

    def _conv(self, path: str, mod: qnn.Conv2d, v: _Val, args: list[Any], out: Any) -> None:
        w, wz = self.weight(path, mod.weight)
        xz = self.const(f"{path}.input_zero_point", np.array(ZERO_POINT, dtype=np.uint8))
        kh, kw = mod.weight.shape[2:]
        ph, pw = mod.padding
        acc = self.node(
            "ConvInteger",
            [v.name, w, xz, wz],
            f"{path}.conv",
            kernel_shape=[kh, kw],
            strides=list(mod.stride),
            pads=[ph, pw, ph, pw],
            dilations=list(mod.dilation),
            group=mod.groups,
        )
        scales: tuple[float, ...] = (v.scale,)  # type: ignore[assignment]
        residual = None
        if isinstance(mod, qnn.ConvAdd2d):
            residual = self.activation(args[1], f"{path} residual")
            scales = (v.scale, residual.scale)  # type: ignore[assignment]
        self._accumulated(path, mod, acc, out, [1, -1, 1, 1], scales, residual)

    def _linear(
        self, path: str, mod: qnn.Linear, v: _Val, inp: torch.Tensor, out: torch.Tensor
    ) -> None:
        if inp.dim() != 2:
            raise InputError(f"cannot export {path} (Linear) on a {inp.dim()}-D input: 2-D only")
        w, wz = self.weight(path, mod.weight.t().contiguous())
        xz = self.const(f"{path}.input_zero_point", np.array(ZERO_POINT, dtype=np.uint8))
        acc = self.node("MatMulInteger", [v.name, w, xz, wz], f"{path}.matmul")
        self._accumulated(path, mod, acc, out, [-1], (v.scale,))  # type: ignore[arg-type]

    def _pool(
        self, path: str, mod: qnn.AdaptiveAvgPool2d, v: _Val, inp: torch.Tensor, out: Any
    ) -> None:
        c, h, w = inp.shape[1:]
        oh, ow = out.shape[-2:]
        kh, kw = h // oh, w // ow
        shape = self.const(f"{path}.blocks", np.array([0, c, oh, kh, ow, kw], dtype=np.int64))
        ints = self.centred(v.name, self.types.INT32, path)
        blocks = self.node("Reshape", [ints, shape], f"{path}.reshape")
        axes = self.const(f"{path}.axes", np.array([3, 5], dtype=np.int64))
        sums = self.node("ReduceSum", [blocks, axes], f"{path}.sum", keepdims=0)
        m, shift = mod.multiplier(v.scale, kh * kw)  # type: ignore[arg-type]
        q = self.requantize([(sums, _multiplier(m, shift, []), False)], -128, 127, path)
        self.record(out, _Val(q, float(mod.output_scale)))

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
        s_out = float(mod.output_scale)
        tensors, dim = functional_inputs(method, args, kwargs)
        if method == "cat":
            parts = []
            for i, t in enumerate(tensors):
                v = self.activation(t, where)
                (m,), shift = mod.multipliers([v.scale])  # type: ignore[list-item]
                terms = [(v.name, _multiplier(m, shift, []), True)]
                parts.append(self.requantize(terms, -128, 127, f"{where}{i}"))
            self.record(out, _Val(self.node("Concat", parts, where, axis=dim), s_out))
            return
        a, b = (self.activation(t, where) for t in tensors)
        if method == "add":
            mults, shift = mod.multipliers([a.scale, b.scale])  # type: ignore[list-item]
            terms = [
                (a.name, _multiplier(mults[0], shift, []), True),
                (b.name, _multiplier(mults[1], shift, []), True),
            ]
        else:
            xa = self.centred(a.name, self.types.INT32, f"{where}.a")
            xb = self.centred(b.name, self.types.INT32, f"{where}.b")
            prod = self.node("Mul", [xa, xb], f"{where}.product")
            (m,), shift = mod.multipliers([a.scale * b.scale], 128 * 128)  # type: ignore[operator]
            terms = [(prod, _multiplier(m, shift, []), False)]
        self.record(out, _Val(self.requantize(terms, -128, 127, where), s_out))
