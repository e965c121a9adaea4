"""``layers.csv`` (one row per layer, and the model output's) and ``sensitivity.json``
(the metric, the ranking worst first, the suggestions): every number of the report,
for scripts."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from hatcli.analyze.layers import Layer
from hatcli.analyze.measure import OUTPUT, LayerStats
from hatcli.analyze.result import Analysis, number
from hatcli.analyze.sensitivity import Sensitivity

COLUMNS = (
    "order",
    "name",
    "type",
    "runs_as",
    "qconfig",
    "calls",
    "input_scale",
    "output_scale",
    "output",
    "accumulated_cosine",
    "accumulated_sqnr_db",
    "accumulated_max_error_scales",
    "qat_cosine",
    "qat_sqnr_db",
    "single_op_cosine",
    "single_op_sqnr_db",
    "single_op_max_error_scales",
    "single_op_worst_channel_sqnr_db",
    "single_op_weights_sqnr_db",
    "single_op_activations_sqnr_db",
    "clipped_fraction",
    "activation_channel_spread",
    "weight_channel_spread",
    "weights_zeroed_fraction",
    "only_weights",
    "only_activations",
    "all_but_weights",
    "all_but_activations",
    "cost",
    "rank",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return str(value)


def layer_row(analysis: Analysis, layer: Layer) -> dict[str, Any]:
    """The layer's numbers by column name (``None``: not applicable or not measured)."""
    stats = analysis.stats[layer.name]
    sens = (analysis.sensitivity or {}).get(layer.name)
    return {
        "order": layer.order if layer.order >= 0 else None,
        "name": layer.name,
        "type": layer.type,
        "runs_as": layer.runs_as,
        "qconfig": layer.qconfig,
        "calls": stats.calls,
        **_stats_columns(stats),
        **_sensitivity_columns(sens),
        "rank": analysis.rank_of(layer.name),
    }


def _measured(stats_count: int, value: float) -> float | None:
    return value if stats_count else None


def _stats_columns(stats: LayerStats) -> dict[str, Any]:
    single_w = stats.single_weight
    single_a = stats.single_activation
    return {
        "input_scale": stats.input_scale,
        "output_scale": stats.output_scale,
        "output": stats.output_kind,
        "accumulated_cosine": _measured(stats.accumulated.count, stats.accumulated.cosine),
        "accumulated_sqnr_db": _measured(stats.accumulated.count, stats.accumulated.sqnr_db),
        "accumulated_max_error_scales": stats.accumulated.max_scaled,
        "qat_cosine": _measured(stats.qat.count, stats.qat.cosine),
        "qat_sqnr_db": _measured(stats.qat.count, stats.qat.sqnr_db),
        "single_op_cosine": _measured(stats.single.count, stats.single.cosine),
        "single_op_sqnr_db": _measured(stats.single.count, stats.single.sqnr_db),
        "single_op_max_error_scales": stats.single.max_scaled,
        "single_op_worst_channel_sqnr_db": stats.single.worst_channel_sqnr_db,
        "single_op_weights_sqnr_db": _measured(single_w.count, single_w.sqnr_db),
        "single_op_activations_sqnr_db": _measured(single_a.count, single_a.sqnr_db),
        "clipped_fraction": stats.clipped_fraction,
        "activation_channel_spread": stats.activation_spread,
        "weight_channel_spread": stats.weight_spread,
        "weights_zeroed_fraction": stats.weights_zeroed,
    }


def _sensitivity_columns(sens: Sensitivity | None) -> dict[str, Any]:
    if sens is None:
        return {k: None for k in ("only_weights", "only_activations", "all_but_weights")} | {
            "all_but_activations": None,
            "cost": None,
        }
    return {
        "only_weights": sens.only_weights,
        "only_activations": sens.only_activations,
        "all_but_weights": sens.all_but_weights,
        "all_but_activations": sens.all_but_activations,
        "cost": sens.cost,
    }


def output_row(analysis: Analysis) -> dict[str, Any]:
    """The model output: float against integer (accumulated) and against QAT."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    out = analysis.output
    row.update(
        name=OUTPUT,
        type="-",
        runs_as="-",
        qconfig="-",
        calls=out.calls,
        output="float",
        accumulated_cosine=out.accumulated.cosine,
        accumulated_sqnr_db=out.accumulated.sqnr_db,
        qat_cosine=out.qat.cosine,
        qat_sqnr_db=out.qat.sqnr_db,
    )
    return row


def layers_csv(analysis: Analysis) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for layer in analysis.layers:
        writer.writerow({k: _cell(v) for k, v in layer_row(analysis, layer).items()})
    writer.writerow({k: _cell(v) for k, v in output_row(analysis).items()})
    return buffer.getvalue()


def _suggestion(analysis: Analysis, name: str) -> dict[str, Any] | None:
    found = analysis.suggestions.get(name)
    if found is None:
        return None
    return {
        "label": found.candidate.label,
        "fragment": found.fragment,
        "rules": found.candidate.rules,
        "metric": number(found.metric),
        "needs_graph_mode": found.eager_float,
        "improves": found.improves,
        "tried": [{"label": c.label, "metric": number(v)} for c, v in found.tried],
    }


def sensitivity_json(analysis: Analysis) -> str:
    ranking = []
    for index, layer in enumerate(analysis.ranking):
        sens = (analysis.sensitivity or {}).get(layer.name)
        stats = analysis.stats[layer.name]
        entry: dict[str, Any] = {
            "rank": index + 1,
            "name": layer.name,
            "type": layer.type,
            "runs_as": layer.runs_as,
            "single_op_sqnr_db": number(stats.single.sqnr_db),
            "accumulated_sqnr_db": number(stats.accumulated.sqnr_db),
        }
        if sens is not None:
            entry.update(
                cost=number(sens.cost),
                culprit=sens.culprit if sens.cost > 0 else None,
                only_weights=number(sens.only_weights),
                only_activations=number(sens.only_activations),
                all_but_weights=number(sens.all_but_weights),
                all_but_activations=number(sens.all_but_activations),
            )
        if layer.name in analysis.reasons:
            entry["why"] = analysis.reasons[layer.name]
        suggestion = _suggestion(analysis, layer.name)
        if suggestion is not None:
            entry["suggestion"] = suggestion
        ranking.append(entry)
    data = {
        "stage": analysis.stage,
        "metric": analysis.choice.key,
        "higher_is_better": analysis.choice.higher_is_better,
        "float": number(analysis.metrics["float"]),
        "qat": number(analysis.metrics["qat"]),
        "integer": number(analysis.metrics["integer"]),
        "batches": analysis.batches,
        "samples": analysis.samples,
        "ranked_by": analysis.ranked_by,
        "ranking": ranking,
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
