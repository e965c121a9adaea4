"""QATTensor: a fake-quantized float activation that remembers its scale.

QAT modules read the scale of their input to fake-quantize their bias exactly as the
integer model stores it (int32 at ``s_in * s_w``), which keeps QAT eval and the integer
model in step. Shape operations keep the scale; every other op returns a plain tensor.
Autograd is unaffected (``as_subclass`` stays on the graph).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hatcli.quant.qtensor import _ELEMENTWISE_SAFE, _SHAPE_OPS, _flat

_KEEP_SCALE = _SHAPE_OPS | _ELEMENTWISE_SAFE


class QATTensor(torch.Tensor):
    """Float values on the int8 grid of ``q_scale`` (a 0-d float32 tensor)."""

    q_scale: torch.Tensor  # type: ignore[assignment]  # shadows Tensor.q_scale() on purpose

    @staticmethod
    def wrap(x: torch.Tensor, scale: torch.Tensor) -> QATTensor:
        """``x`` (already fake-quantized with ``scale``) as a QATTensor."""
        t = x.as_subclass(QATTensor)
        t.q_scale = scale.detach()
        return t

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
        if func not in _KEEP_SCALE:
            return out
        src = next(a for a in _flat(args, kwargs) if isinstance(a, QATTensor))
        return _rewrap(out, src.q_scale)


def _rewrap(out: Any, scale: torch.Tensor) -> Any:
    if isinstance(out, (list, tuple)):
        return type(out)(_rewrap(o, scale) for o in out)
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return QATTensor.wrap(out, scale)
    return out


def input_scale(x: torch.Tensor) -> torch.Tensor | None:
    """The scale of a fake-quantized activation, ``None`` for a plain tensor."""
    return x.q_scale if isinstance(x, QATTensor) else None


def plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an ordinary tensor (still on the autograd graph)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, QATTensor) else x
