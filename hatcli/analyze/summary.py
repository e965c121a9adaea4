"""The terminal summary: the three models' metric and the five worst layers, each with
why and a rule to paste under ``model_convert_pipeline.qconfig``."""

from __future__ import annotations

from hatcli.analyze.diagnosis import format_cost, format_db, format_metric
from hatcli.analyze.result import Analysis
from hatcli.analyze.suggest import Suggestion

EAGER_FLOAT_NOTE = (
    "this model is prepared eagerly: a float op there needs QuantStub/DeQuantStub "
    "around it in the model's code; or prepare it by tracing (Float2QAT: {mode: graph}), "
    "which adds them"
)


def no_suggestion(analysis: Analysis) -> str:
    """Why a worst layer gets no rule."""
    if analysis.sensitivity is None:
        return "none: nothing in its single-op figures stands out (--no-sensitivity)"
    return "none: leaving its quantizers off gains nothing on these batches"


def effect(analysis: Analysis, found: Suggestion) -> str:
    """What the suggestion did to the metric, as measured on the analysis batches."""
    choice = analysis.choice
    if found.metric is None:
        return "not measured (--no-sensitivity)"
    return (
        f"{choice.key} {format_metric(choice, analysis.metrics['qat'])} -> "
        f"{format_metric(choice, found.metric)} on these batches"
    )


def headline(analysis: Analysis) -> str:
    m, choice = analysis.metrics, analysis.choice
    return (
        f"[{analysis.stage}] {choice.key}: float {format_metric(choice, m['float'])}, "
        f"QAT {format_metric(choice, m['qat'])}, integer {format_metric(choice, m['integer'])} "
        f"({analysis.samples} val samples in {analysis.batches} batch"
        f"{'es' if analysis.batches != 1 else ''})"
    )


def _sensitivity_line(analysis: Analysis, name: str) -> str | None:
    sens = (analysis.sensitivity or {}).get(name)
    if sens is None:
        return None
    choice = analysis.choice
    parts = []
    for label, only, all_but in (
        ("weights", sens.only_weights, sens.all_but_weights),
        ("activations", sens.only_activations, sens.all_but_activations),
    ):
        if only is not None:
            parts.append(
                f"{label}: only them {format_metric(choice, only)}, "
                f"all but them {format_metric(choice, all_but)}"
            )
    return f"cost {format_cost(choice, sens.cost)} ({'; '.join(parts)})"


def summary_lines(analysis: Analysis) -> list[str]:
    lines = [headline(analysis)]
    lines += [f"note: {note}" for note in analysis.notes]
    lines.append(f"the {len(analysis.worst)} worst layers (by {analysis.ranked_by}):")
    choice = analysis.choice
    for index, layer in enumerate(analysis.worst):
        stats = analysis.stats[layer.name]
        lines.append(
            f"{index + 1}. {layer.name} ({layer.type}, {layer.runs_as}): single-op SQNR "
            f"{format_db(stats.single.sqnr_db)}, accumulated {format_db(stats.accumulated.sqnr_db)}"
        )
        sensitivity = _sensitivity_line(analysis, layer.name)
        if sensitivity:
            lines.append(f"   {sensitivity}")
        if layer.name in analysis.reasons:
            lines.append(f"   why: {analysis.reasons[layer.name]}")
        found = analysis.suggestions.get(layer.name)
        if found is None:
            lines.append(f"   suggestion: {no_suggestion(analysis)}")
            continue
        if not found.improves:
            lines.append(
                f"   suggestion: none: no rule tried gains here (the best, "
                f"{found.candidate.label}, gives {format_metric(choice, found.metric)})"
            )
            continue
        lines.append(f"   suggestion: {found.candidate.label} ({effect(analysis, found)}); under")
        lines.append("   model_convert_pipeline.qconfig:")
        lines += [f"     {line}" for line in found.fragment.splitlines()]
        if found.eager_float:
            lines.append(f"   ({EAGER_FLOAT_NOTE})")
    if analysis.folder is not None:
        lines.append(f"report: {analysis.folder / 'report.html'} (layers.csv, sensitivity.json)")
    return lines
