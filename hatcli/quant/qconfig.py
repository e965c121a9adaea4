"""QConfig: which FakeQuantize an op's output (activation) and weight get during QAT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.observer import MovingAverageMinMaxObserver, PerChannelMinMaxObserver

FakeQuantizeFactory = Callable[[], FakeQuantize]


@dataclass(frozen=True)
class QConfig:
    """Factories for an op's output and weight fake-quantizers.

    ``activation=None`` means the op's output stays unquantized (float in QAT, int32 in
    the integer model): the qconfig of a model's last conv or linear.
    """

    activation: FakeQuantizeFactory | None
    weight: FakeQuantizeFactory | None


default_activation_fake_quant: FakeQuantizeFactory = partial(
    FakeQuantize, observer=MovingAverageMinMaxObserver
)
default_weight_fake_quant: FakeQuantizeFactory = partial(
    FakeQuantize, observer=PerChannelMinMaxObserver
)


def get_default_qat_qconfig() -> QConfig:
    """int8 per-tensor activations, int8 per-output-channel weights."""
    return QConfig(activation=default_activation_fake_quant, weight=default_weight_fake_quant)


def get_default_qat_out_qconfig() -> QConfig:
    """For a model's output layer: quantized weights, no output fake-quant."""
    return QConfig(activation=None, weight=default_weight_fake_quant)
