"""Integer-exact eval: in eval mode a QAT module computes with its integer twin.

The QAT training forward simulates int8 in float32 so that it can be differentiated. Its
accumulation order and its float32 ``1 / scale`` can land a value one step away from the
integer model's exact sum and integer-multiplier requantization, and one step at the
classifier's input moves the int32 output by ``|w|`` accumulator steps. In eval, every
fake-quantized input is exactly ``k * scale``, so a module can hand the integers ``k`` to
the integer module it converts to and return that module's result: validation during QAT
then measures, bit for bit, the model ``QAT2Quantize`` will produce.

The twin is built from the module's current weights and scales and rebuilt when any of
them changes. With gradients enabled the values stay the twin's and the gradient is the
float simulation's (straight-through). ``float_simulation()`` turns the twin off, e.g. to
measure how closely the training forward tracks the integer model.

The integer modules import this package, never the reverse, so the conversion that
builds a twin is installed from above: ``hatcli.quant.integer_twin`` calls
``set_twin_factory`` with the QAT -> integer table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.qat_tensor import QATTensor, plain
from hatcli.quant.qtensor import QTensor

TwinFactory = Callable[[nn.Module], nn.Module]

_USE_TWIN: ContextVar[bool] = ContextVar("hat_integer_eval", default=True)
_twin_factory: TwinFactory | None = None


def set_twin_factory(factory: TwinFactory) -> None:
    """Install the QAT -> integer conversion that builds each module's twin."""
    global _twin_factory
    _twin_factory = factory


@contextmanager
def float_simulation() -> Iterator[None]:
    """Within this block, QAT modules in eval mode run the float simulation, not the twin."""
    token = _USE_TWIN.set(False)
    try:
        yield
    finally:
        _USE_TWIN.reset(token)


def to_qtensor(x: QATTensor) -> QTensor:
    """The integers of a fake-quantized activation (``x / scale`` is within float rounding
    of an integer, so rounding recovers it exactly)."""
    scale = x.q_scale
    return QTensor(torch.round(plain(x).detach() / scale).to(torch.int8), scale)


def from_qtensor(q: torch.Tensor) -> torch.Tensor:
    """An integer module's output as the QAT model carries it: int8 outputs as
    QATTensors (``k * scale`` in float32, as fake quantization yields), int32 as float."""
    if not isinstance(q, QTensor):
        return q
    value = q.dequantize()
    return QATTensor.wrap(value, q.q_scale) if q.q_axis is None else value


class IntegerEval(nn.Module):
    """Base of the QAT modules that have an integer twin (see the module docstring)."""

    def _twin_key(self) -> tuple[tuple[int, int], ...]:
        tensors = [*self.parameters(), *self.buffers()]
        return tuple((id(t), t._version) for t in tensors)

    def _twin(self) -> nn.Module:
        key = self._twin_key()
        cached = self.__dict__.get("_integer_twin")
        if cached is not None and cached[0] == key:
            twin: nn.Module = cached[1]
            return twin
        if _twin_factory is None:
            raise RuntimeError("no integer twin factory installed: import hatcli.quant first")
        with torch.no_grad():
            twin = _twin_factory(self)
        # Kept out of _modules: not a submodule, not in the state dict.
        self.__dict__["_integer_twin"] = (key, twin)
        return twin

    def _twin_ready(self, inputs: Sequence[torch.Tensor]) -> bool:
        if self.training or not _USE_TWIN.get():
            return False
        if not all(isinstance(x, QATTensor) for x in inputs):
            return False
        quantizers = [m for m in self.modules() if isinstance(m, FakeQuantize)]
        return all(
            bool(fq.fake_quant_enabled) and fq.activation_post_process.initialized
            for fq in quantizers
        )

    def exact_eval(
        self,
        simulate: Callable[[], torch.Tensor],
        inputs: Sequence[torch.Tensor],
        run_twin: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``simulate()`` in training (or when the twin cannot run), else the twin's result
        on ``inputs``; ``run_twin(twin, *qtensors)`` calls it (default: ``twin(*q)``)."""
        if not self._twin_ready(inputs):
            return simulate()
        twin = self._twin()
        q_inputs = [to_qtensor(x) for x in inputs]  # type: ignore[arg-type]
        with torch.no_grad():
            out = run_twin(twin, *q_inputs) if run_twin is not None else twin(*q_inputs)
        exact = from_qtensor(out)
        needs_grad = any(x.requires_grad for x in inputs) or any(
            p.requires_grad for p in self.parameters()
        )
        if not (torch.is_grad_enabled() and needs_grad):
            return exact
        simulated = simulate()
        values = plain(simulated) + (plain(exact) - plain(simulated)).detach()
        if isinstance(exact, QATTensor):
            return QATTensor.wrap(values, exact.q_scale)
        return values

    def train(self, mode: bool = True) -> Any:
        self.__dict__.pop("_integer_twin", None)
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:  # .to(), .cuda(), ...
        self.__dict__.pop("_integer_twin", None)
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch: untyped
