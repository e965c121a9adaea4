"""Sensitivity: the validation metric with only one layer's quantizers on (the others
off: the float model plus that layer's rounding), and with all but one layer's on (the
integer model less that layer's rounding); weight and activation quantizers apart.

A layer's **cost** is the largest of: the metric lost against the float model when only
its weights, or only its activations, are quantized; and the metric won back against
the fully quantized model when its weights, or its activations, are left unquantized.
Layers are ranked by cost, then by single-op SQNR (lowest first), then in execution
order, so the ranking is deterministic.

The passes run the float simulation (QAT's training forward, in eval mode), which op by
op is within one int8 step of the integer model, and about four times cheaper than
QAT eval's integer twins; "all on" is then the QAT column of the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hatcli.analyze.evaluate import MetricChoice
from hatcli.analyze.layers import Layer
from hatcli.analyze.switches import enabled_only
from hatcli.quant.fake_quantize import FakeQuantize

Evaluate = Callable[[], float]


@dataclass
class Sensitivity:
    """One layer's metrics with its quantizers alone on / alone off."""

    only_weights: float | None = None
    only_activations: float | None = None
    all_but_weights: float | None = None
    all_but_activations: float | None = None
    cost: float = 0.0
    cost_weights: float = 0.0
    cost_activations: float = 0.0

    @property
    def culprit(self) -> str:
        """``activations`` or ``weights``: which quantizers cost more."""
        return "weights" if self.cost_weights > self.cost_activations else "activations"


def evaluations(layers: list[Layer]) -> int:
    """How many metric passes ``measure_sensitivity`` makes."""
    return sum(2 * bool(layer.weights) + 2 * bool(layer.activations) for layer in layers)


def measure_sensitivity(
    layers: list[Layer],
    quantizers: list[FakeQuantize],
    evaluate: Evaluate,
    choice: MetricChoice,
    float_metric: float,
    qat_metric: float,
    advance: Callable[[], None],
) -> dict[str, Sensitivity]:
    found: dict[str, Sensitivity] = {}
    for layer in layers:
        if not layer.quantizers:
            continue
        result = Sensitivity()
        for kind, own in (("weights", layer.weights), ("activations", layer.activations)):
            if not own:
                continue
            ids = {id(fq) for fq in own}
            with enabled_only(quantizers, own):
                only = evaluate()
            advance()
            with enabled_only(quantizers, [fq for fq in quantizers if id(fq) not in ids]):
                all_but = evaluate()
            advance()
            cost = max(
                _finite(choice.cost(float_metric, only)),
                _finite(-choice.cost(qat_metric, all_but)),
            )
            if kind == "weights":
                result.only_weights, result.all_but_weights, result.cost_weights = (
                    only,
                    all_but,
                    cost,
                )
            else:
                result.only_activations, result.all_but_activations = only, all_but
                result.cost_activations = cost
        result.cost = max(result.cost_weights, result.cost_activations)
        found[layer.name] = result
    return found


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def rank(
    layers: list[Layer],
    sensitivity: dict[str, Sensitivity] | None,
    single_sqnr: dict[str, float],
) -> list[Layer]:
    """The layers with quantizers, worst first: by cost when sensitivity was measured,
    then by single-op SQNR (lowest first), then in execution order."""
    candidates = [layer for layer in layers if layer.quantizers and layer.order >= 0]

    def key(layer: Layer) -> tuple[float, float, int]:
        cost = sensitivity[layer.name].cost if sensitivity and layer.name in sensitivity else 0.0
        sqnr = single_sqnr.get(layer.name, math.inf)
        return (-round(cost, 12), sqnr if not math.isnan(sqnr) else math.inf, layer.order)

    return sorted(candidates, key=key)
