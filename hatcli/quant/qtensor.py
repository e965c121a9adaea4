"""QTensor: the integer model's activations, integers that carry their scale.

``real value = int_repr() * q_scale`` (zero point 0). ``q_scale`` is a 0-d tensor for
int8 per-tensor activations, or a 1-d tensor along ``q_axis`` for the int32 output of a
layer without output quantization. Only shape operations keep the scale (``flatten``,
``view``, indexing, ...); any other torch op on a QTensor raises, so float code cannot
silently compute on raw integers. Use ``int_repr()`` or ``dequantize()`` to leave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_SHAPE_OPS: set[Callable[..., Any]] = {
    torch.Tensor.view,
    torch.Tensor.reshape,
    torch.reshape,
    torch.Tensor.flatten,
    torch.flatten,
    torch.Tensor.permute,
    torch.permute,
    torch.Tensor.transpose,
    torch.transpose,
    torch.Tensor.squeeze,
    torch.squeeze,
    torch.Tensor.unsqueeze,
    torch.unsqueeze,
    torch.Tensor.__getitem__,
    torch.Tensor.chunk,
    torch.chunk,
    torch.Tensor.split,
    torch.split,
    torch.Tensor.unbind,
    torch.unbind,
}
# Ops that keep every element in place: also fine for per-channel scales.
_ELEMENTWISE_SAFE: set[Callable[..., Any]] = {
    torch.Tensor.clone,
    torch.Tensor.detach,
    torch.Tensor.contiguous,
    torch.Tensor.cpu,
    torch.Tensor.cuda,
    torch.Tensor.to,
}
# Ops that read a QTensor without computing on its values. Under torch.jit.trace sizes
# come back as tensors (so a trace follows the batch size): they pass as they are.
_PASS: set[Callable[..., Any]] = {
    torch.Tensor.__repr__,
    torch.Tensor.__format__,
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.Tensor.shape.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__,  # type: ignore[attr-defined]
}


class QTensor(torch.Tensor):
    """Integer tensor (int8 or int32) with its quantization scale."""

    q_scale: torch.Tensor  # type: ignore[assignment]  # shadows Tensor.q_scale() on purpose
    q_axis: int | None

    @staticmethod
    def __new__(
        cls, data: torch.Tensor, scale: torch.Tensor | float, axis: int | None = None
    ) -> QTensor:
        if data.is_floating_point():
            raise TypeError(f"QTensor holds integers, got {data.dtype}")
        t = torch.Tensor._make_subclass(cls, data)
        t.q_scale = torch.as_tensor(scale).detach()
        if axis is not None and axis < 0:
            axis += data.dim()
        t.q_axis = axis
        if (axis is None) != (t.q_scale.dim() == 0):
            raise ValueError("a per-tensor QTensor has a 0-d scale, a per-channel one a 1-d scale")
        return t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def int_repr(self) -> torch.Tensor:
        """The integers, as a plain tensor sharing memory."""
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.as_subclass(self, torch.Tensor)

    def dequantize(self) -> torch.Tensor:
        """The float32 values ``int_repr() * q_scale``."""
        ints = self.int_repr()
        scale = self.q_scale.to(ints.device)
        if self.q_axis is not None:
            shape = [1] * ints.dim()
            shape[self.q_axis] = -1
            scale = scale.reshape(shape)
        return (ints.to(torch.float64) * scale.to(torch.float64)).to(torch.float32)

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if func in _PASS or not _holds_tensor(out):
            return out
        src = next(a for a in _flat(args, kwargs) if isinstance(a, QTensor))
        allowed = _ELEMENTWISE_SAFE if src.q_axis is not None else _SHAPE_OPS | _ELEMENTWISE_SAFE
        name = getattr(func, "__name__", str(func))
        if func not in allowed:
            raise TypeError(
                f"{name} is not supported on a QTensor (integers with a scale): "
                "use a quantizable module, or .dequantize() / .int_repr()"
            )
        return _wrap(out, src, name)


def _flat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    items: list[Any] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            items.extend(a)
        else:
            items.append(a)
    return items


def _holds_tensor(out: Any) -> bool:
    if isinstance(out, (list, tuple)):
        return any(isinstance(o, torch.Tensor) for o in out)
    return isinstance(out, torch.Tensor)


def _wrap(out: Any, src: QTensor, name: str) -> Any:
    if isinstance(out, (list, tuple)):
        return type(out)(_wrap(o, src, name) for o in out)
    if out.dtype != src.int_repr().dtype:
        raise TypeError(f"{name} would change a QTensor's dtype: use .dequantize() first")
    return QTensor(out, src.q_scale, src.q_axis)
