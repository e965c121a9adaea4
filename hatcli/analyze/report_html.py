"""``report.html``: one self-contained page (figures embedded, a few lines of inline
script to sort the table, nothing fetched), readable offline.

Sections: the summary (the three models' metric, the five worst layers, why, and the
rule to change), the per-layer SQNR figure, the sensitivity figure, the ranges of the
worst layers, and the full per-layer table.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from hatcli.analyze import plots
from hatcli.analyze.diagnosis import format_db, format_metric
from hatcli.analyze.files import COLUMNS, layer_row, output_row
from hatcli.analyze.result import DEFAULT_SAMPLES, Analysis
from hatcli.analyze.summary import EAGER_FLOAT_NOTE, effect, no_suggestion

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; }
tr.worst td { background: #fde8e8; }
tr.island td { background: #eef4fb; }
pre { background: #f6f6f6; padding: 0.5em; display: inline-block; }
.note { color: #555; }
img { max-width: 100%; }
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), up = th.dataset.dir !== 'up';
    th.dataset.dir = up ? 'up' : 'down';
    function key(row) {
      var cell = row.cells[col], v = cell.dataset.v;
      if (v === undefined) return cell.textContent;
      return v === '' ? NaN : parseFloat(v);
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x === 'number' || typeof y === 'number') {
        if (isNaN(x)) return 1; if (isNaN(y)) return -1;
        return up ? x - y : y - x;
      }
      return up ? String(x).localeCompare(y) : String(y).localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

TEXT_COLUMNS = {"name", "type", "runs_as", "qconfig", "output"}


def _img(data: str, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(column: str, value: Any) -> str:
    if column in TEXT_COLUMNS:
        return f'<td class="text">{escape("" if value is None else str(value))}</td>'
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v="">-</td>'
    if isinstance(value, float):
        if math.isinf(value):
            text, sort = ("inf", "Infinity") if value > 0 else ("-inf", "-Infinity")
            return f'<td data-v="{sort}">{text}</td>'
        return f'<td data-v="{value!r}">{value:.4g}</td>'
    return f'<td data-v="{value}">{escape(str(value))}</td>'


def _table(analysis: Analysis) -> str:
    head = "".join(
        f'<th class="text">{c}</th>' if c in TEXT_COLUMNS else f"<th>{c}</th>" for c in COLUMNS
    )
    worst = {layer.name for layer in analysis.worst}
    rows = []
    for layer in analysis.layers:
        row = layer_row(analysis, layer)
        css = "worst" if layer.name in worst else "island" if layer.is_island else ""
        cells = "".join(_cell(c, row[c]) for c in COLUMNS)
        rows.append(f'<tr class="{css}">{cells}</tr>')
    out = output_row(analysis)
    rows.append("<tr>" + "".join(_cell(c, out[c]) for c in COLUMNS) + "</tr>")
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _summary(analysis: Analysis) -> str:
    choice, m = analysis.choice, analysis.metrics
    default = (
        f" (the default: whole batches up to {DEFAULT_SAMPLES} samples, the whole split if smaller)"
        if analysis.default_batches
        else ""
    )
    parts = [
        "<table><tr><th>model</th><th>float</th><th>QAT</th><th>integer</th></tr>"
        f"<tr><td class='text'>{escape(choice.key)}</td>"
        f"<td>{format_metric(choice, m['float'])}</td><td>{format_metric(choice, m['qat'])}</td>"
        f"<td>{format_metric(choice, m['integer'])}</td></tr></table>",
        f"<p class='note'>On {analysis.samples} samples of <code>val</code> in "
        f"{analysis.batches} batch{'es' if analysis.batches != 1 else ''}{escape(default)}. "
        f"Weights: {escape(analysis.weights)}; "
        f"prepared in {escape(analysis.preparation)} mode, qat_mode "
        f"{escape(analysis.qat_mode)}. Layers ranked by {escape(analysis.ranked_by)}.</p>",
    ]
    parts += [f"<p class='note'>Note: {escape(n)}</p>" for n in analysis.notes]
    parts.append("<ol>")
    for layer in analysis.worst:
        stats = analysis.stats[layer.name]
        item = [
            f"<b>{escape(layer.name)}</b> ({escape(layer.type)}, {escape(layer.runs_as)}): "
            f"single-op SQNR {format_db(stats.single.sqnr_db)}, accumulated "
            f"{format_db(stats.accumulated.sqnr_db)}"
        ]
        if layer.name in analysis.reasons:
            item.append(f"<br>Why: {escape(analysis.reasons[layer.name])}")
        found = analysis.suggestions.get(layer.name)
        if found is None:
            item.append(f"<br>Suggestion: {escape(no_suggestion(analysis))}")
        elif not found.improves:
            item.append("<br>Suggestion: none: no rule tried gains here.")
        else:
            item.append(
                f"<br>Suggestion: {escape(found.candidate.label)} "
                f"({escape(effect(analysis, found))}), under "
                f"<code>model_convert_pipeline.qconfig</code>:<br><pre>{escape(found.fragment)}</pre>"
            )
        if found is not None:
            if found.tried:
                tried = ", ".join(
                    f"{escape(c.label)}: {format_metric(choice, v)}" for c, v in found.tried
                )
                item.append(f"<br><span class='note'>Tried: {tried}</span>")
            if found.eager_float:
                item.append(f"<br><span class='note'>{escape(EAGER_FLOAT_NOTE)}</span>")
        parts.append(f"<li>{''.join(item)}</li>")
    parts.append("</ol>")
    return "".join(parts)


def _ranges(analysis: Analysis) -> str:
    parts = []
    for layer in analysis.worst:
        stats = analysis.stats[layer.name]
        fq = layer.output_quantizer
        text = f"<h3>{escape(layer.name)}</h3>"
        if fq is not None and fq.ch_axis is None:
            obs = fq.activation_post_process
            values = stats.values()
            seen = ""
            if values.numel():
                low, high = float(values.min()), float(values.max())
                seen = f"; the float outputs here span [{low:.4g}, {high:.4g}]"
            text += (
                f"<p>The calibration observer's range is [{float(obs.min_val):.4g}, "
                f"{float(obs.max_val):.4g}], so the scale is {float(fq.scale):.4g} and the "
                f"int8 grid covers [{-128 * float(fq.scale):.4g}, {127 * float(fq.scale):.4g}]"
                f"{seen}; {100 * stats.clipped_fraction:.3g}% of them are clipped.</p>"
            )
        else:
            text += "<p>Its output is not quantized per tensor (int32 or float).</p>"
        parts.append(text + _img(plots.ranges_figure(layer, stats), f"ranges of {layer.name}"))
    return "".join(parts)


def render(analysis: Analysis) -> str:
    title = f"hat analyze: {analysis.spec_name}, stage {analysis.stage}"
    sections = [
        f"<h1>{escape(title)}</h1>",
        "<h2>Summary</h2>",
        _summary(analysis),
        "<h2>Per-layer SQNR</h2>",
        "<p>Accumulated: each op's output in the integer (or QAT) model against the float "
        "model. Single-op: the op alone quantized, fed the float model's input.</p>",
        _img(plots.sqnr_figure(analysis), "per-layer SQNR"),
        "<h2>Sensitivity</h2>",
    ]
    if analysis.sensitivity is not None:
        sections.append(_img(plots.sensitivity_figure(analysis), "sensitivity"))
    else:
        sections.append("<p>Not measured (--no-sensitivity).</p>")
    sections += [
        "<h2>Ranges of the worst layers</h2>",
        _ranges(analysis),
        "<h2>Layers</h2>",
        "<p>Click a column to sort. Red: the worst layers; blue: float islands.</p>",
        _table(analysis),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(sections)
        + f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )
