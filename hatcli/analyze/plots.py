"""The report's figures, drawn with matplotlib (the Agg renderer, no display) and
embedded as base64 PNG, so the page needs no file beside it and no network.

matplotlib is the optional ``hat[analyze]`` extra; ``run.require_plotting`` checks for
it before any work is done.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hatcli.analyze.layers import Layer
from hatcli.analyze.measure import LayerStats
from hatcli.analyze.result import Analysis

DPI = 96
MAX_BARS = 30


def png(fig: Figure) -> str:
    """The figure as a base64 PNG (no metadata: the same figure gives the same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite_or(values: Sequence[float], top: float) -> tuple[list[float], list[int]]:
    """Values with +inf drawn at ``top`` (and their indices, to mark them)."""
    drawn, infinite = [], []
    for i, v in enumerate(values):
        if math.isinf(v) and v > 0:
            drawn.append(top)
            infinite.append(i)
        else:
            drawn.append(v)
    return drawn, infinite


def sqnr_figure(analysis: Analysis) -> str:
    """Accumulated (integer and QAT) and single-op SQNR of every layer, in execution order."""
    layers = [layer for layer in analysis.layers if layer.order >= 0]
    series = {
        "accumulated (integer)": [analysis.stats[x.name].accumulated.sqnr_db for x in layers],
        "accumulated (QAT)": [analysis.stats[x.name].qat.sqnr_db for x in layers],
        "single-op": [analysis.stats[x.name].single.sqnr_db for x in layers],
    }
    finite = [v for vs in series.values() for v in vs if math.isfinite(v)]
    top = (max(finite) if finite else 0.0) + 6.0
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.0))
    ax = fig.subplots()
    x = list(range(len(layers)))
    for (label, values), marker in zip(series.items(), ("o", "s", "^"), strict=True):
        drawn, infinite = _finite_or(values, top)
        ax.plot(x, drawn, marker=marker, label=label, linewidth=1)
        for i in infinite:
            ax.annotate("inf", (i, top), textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set_xticks(x)
    ax.set_xticklabels([layer.name for layer in layers], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer SQNR against the float model (higher is better; inf: exact)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def sensitivity_figure(analysis: Analysis) -> str:
    """Per layer, worst at the top: the metric lost against the float model with only its
    weights / activations quantized, and won back against the QAT model with all but its
    weights / activations quantized."""
    sens = analysis.sensitivity or {}
    layers = [layer for layer in analysis.ranking if layer.name in sens][:MAX_BARS]
    choice = analysis.choice
    scale = 100.0 if choice.key.endswith("accuracy") else 1.0
    unit = "points" if scale == 100.0 else choice.key
    fig = Figure(figsize=(10.0, max(2.5, 0.45 * len(layers) + 1.5)))
    lost, won = fig.subplots(1, 2, sharey=True)
    height = 0.38
    panels = (
        (lost, "float", ("only_weights", "only_activations"), 1.0),
        (won, "qat", ("all_but_weights", "all_but_activations"), -1.0),
    )
    for ax, reference, attrs, sign in panels:
        ref = analysis.metrics[reference]
        for k, (attr, label) in enumerate(zip(attrs, ("weights", "activations"), strict=True)):
            ys, widths = [], []
            for i, layer in enumerate(layers):
                value = getattr(sens[layer.name], attr)
                if value is not None and math.isfinite(value) and math.isfinite(ref):
                    ys.append(i + (k - 0.5) * height)
                    widths.append(sign * scale * choice.cost(ref, value))
            ax.barh(ys, widths, height=height, label=label)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    lost.set_title(f"only this layer quantized: {unit} lost vs float", fontsize=9)
    won.set_title(f"all but this layer quantized: {unit} won back vs QAT", fontsize=9)
    lost.set_yticks(list(range(len(layers))))
    lost.set_yticklabels([layer.name for layer in layers], fontsize=8)
    lost.invert_yaxis()
    fig.suptitle(f"Sensitivity of {choice.key}, worst layer at the top", fontsize=10)
    fig.tight_layout()
    return png(fig)


def ranges_figure(layer: Layer, stats: LayerStats) -> str:
    """The float output's histogram with the int8 grid's range and the observer's range
    drawn over it; and each channel's largest ``|x|`` against the grid's end."""
    values = stats.values().double()
    fq = layer.output_quantizer
    weights = stats.weight_channel_max
    fig = Figure(figsize=(13.0 if weights is not None else 10.0, 3.2))
    ratios = [3, 2, 2] if weights is not None else [3, 2]
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    hist, bars = axes[0], axes[1]
    if values.numel():
        low, high = float(values.min()), float(values.max())
        if fq is not None and fq.ch_axis is None:
            s = float(fq.scale)
            low, high = min(low, -128 * s), max(high, 127 * s)
        edges = torch.linspace(low, high if high > low else low + 1.0, 121).tolist()
        counts = torch.histc(values, bins=120, min=edges[0], max=edges[-1]).tolist()
        hist.stairs(counts, edges, fill=True, alpha=0.6, label="float output (sample)")
        hist.set_yscale("symlog")
    if fq is not None and fq.ch_axis is None:
        s = float(fq.scale)
        obs = fq.activation_post_process
        for x, label, style in (
            (-128 * s, "int8 grid [-128s, 127s]", "-"),
            (127 * s, None, "-"),
            (float(obs.min_val), "observer's range", "--"),
            (float(obs.max_val), None, "--"),
        ):
            if math.isfinite(x):
                color = "red" if style == "-" else "green"
                hist.axvline(x, color=color, linestyle=style, linewidth=1, label=label)
        hist.set_title(f"{layer.name}: output values, scale s = {s:.4g}", fontsize=9)
    else:
        hist.set_title(f"{layer.name}: output values (not quantized per tensor)", fontsize=9)
    hist.legend(fontsize=7)
    channel = stats.channel_max
    if channel is not None and channel.numel():
        bars.bar(list(range(channel.numel())), channel.tolist())
        if fq is not None and fq.ch_axis is None:
            bars.axhline(127 * float(fq.scale), color="red", linewidth=1, label="127 s")
            bars.legend(fontsize=7)
        bars.set_title("max |x| per output channel", fontsize=9)
        bars.set_xlabel("channel")
        bars.xaxis.set_major_locator(MaxNLocator(integer=True))
    if weights is not None:
        axes[2].bar(list(range(weights.numel())), weights.tolist(), color="tab:purple")
        axes[2].set_title("max |w| per output channel (weights)", fontsize=9)
        axes[2].set_xlabel("channel")
        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return png(fig)
