"""Why a layer costs: one sentence from its measurements."""

from __future__ import annotations

import math

import torch

from hatcli.analyze.evaluate import MetricChoice
from hatcli.analyze.layers import Layer
from hatcli.analyze.measure import LayerStats
from hatcli.analyze.sensitivity import Sensitivity

SPREAD_OUTLIER = 8.0
"""A channel whose range is this many times the median channel's is an outlier."""
CLIPPED_NOTABLE = 0.001
ZEROED_NOTABLE = 0.05
INHERITED_DB = 10.0
"""An accumulated SQNR this far below the single-op one is mostly inherited error."""


def culprit(layer: Layer, stats: LayerStats, sensitivity: Sensitivity | None) -> str:
    """``weights`` or ``activations``: by sensitivity when measured, else by single-op SQNR."""
    if not layer.weights:
        return "activations"
    if not layer.activations:
        return "weights"
    if sensitivity is not None and sensitivity.cost > 0:
        return sensitivity.culprit
    w, a = stats.single_weight.sqnr_db, stats.single_activation.sqnr_db
    return "weights" if w < a else "activations"


def format_metric(choice: MetricChoice, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if choice.key.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def format_cost(choice: MetricChoice, cost: float) -> str:
    if choice.key.endswith("accuracy"):
        return f"{100 * cost:.2f} points"
    return f"{cost:.4g}"


def format_db(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f} dB"


def why(
    layer: Layer,
    stats: LayerStats,
    sensitivity: Sensitivity | None,
    choice: MetricChoice,
) -> str:
    kind = culprit(layer, stats, sensitivity)
    if sensitivity is not None and sensitivity.cost <= 0:
        text = "quantizing it costs nothing measurable on these batches"
        single, accumulated = stats.single.sqnr_db, stats.accumulated.sqnr_db
        if accumulated < single - INHERITED_DB:
            text += (
                f"; its accumulated SQNR ({format_db(accumulated)}) is the error of the "
                f"layers before it (single-op: {format_db(single)})"
            )
        return text
    lead = ""
    if sensitivity is not None and sensitivity.cost > 0:
        lead = f"its {kind} cost {format_cost(choice, sensitivity.cost)} of {choice.key}; "
    if kind == "activations":
        return lead + _activation_reason(stats)
    return lead + _weight_reason(stats)


def _activation_reason(stats: LayerStats) -> str:
    spread = stats.activation_spread
    if math.isfinite(spread) and spread >= SPREAD_OUTLIER and stats.channel_max is not None:
        median = float(torch.quantile(stats.channel_max.double(), 0.5))
        steps = ""
        if stats.output_scale:
            steps = (
                f"; one int8 step is {stats.output_scale:.3g}, so the median channel gets "
                f"{median / stats.output_scale:.1f} steps"
            )
        return (
            f"one output channel spans {spread:.0f}x the median channel's range, and a "
            f"per-tensor int8 grid covers them all{steps}"
        )
    clipped = stats.clipped_fraction
    if math.isfinite(clipped) and clipped >= CLIPPED_NOTABLE:
        return f"{100 * clipped:.2f}% of its outputs fall outside its int8 range and are clipped"
    return (
        f"its int8 output grid is coarse for its values (single-op SQNR "
        f"{format_db(stats.single.sqnr_db)})"
    )


def _weight_reason(stats: LayerStats) -> str:
    zeroed = stats.weights_zeroed
    if math.isfinite(zeroed) and zeroed >= ZEROED_NOTABLE:
        return (
            f"{100 * zeroed:.0f}% of its non-zero weights round to 0 on their per-channel "
            "int8 grid (a few large weights set each channel's scale)"
        )
    spread = stats.weight_spread
    if math.isfinite(spread) and spread >= SPREAD_OUTLIER:
        return f"its per-channel weight ranges spread {spread:.0f}x (max/median)"
    alone = stats.single_weight if stats.single_weight.count else stats.single
    return (
        f"its int8 weights lose precision (single-op SQNR with only its weights "
        f"quantized: {format_db(alone.sqnr_db)})"
    )
