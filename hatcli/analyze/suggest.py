"""What to change in the spec for a costly layer: candidate qconfig rules, each tried on
the model as it is (no retraining), the best one kept.

Candidates for a layer whose **output** quantization costs: a percentile observer
(99.99, 99.9, 99), the MSE observer, a fixed scale (the range of the data seen here),
``int8_out`` for an op whose output only leaves the model, and keeping the tensor float
(the op and every op that reads its output: only then is the tensor never quantized,
since graph mode quantizes a float island's output again where a quantized op reads
it). For a layer whose **weights** cost: keeping the op float.

Trying a candidate: its clipping range is set on the output quantizer (what the
observer would have computed from the same float values), or the quantizers a float op
would not have are turned off; the stage's metric is measured; everything is put back.
Calibrating again with the rule (as ``hat train`` will) gives nearly the same ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from hatcli.analyze import fragment
from hatcli.analyze.diagnosis import CLIPPED_NOTABLE, SPREAD_OUTLIER, ZEROED_NOTABLE
from hatcli.analyze.evaluate import MetricChoice
from hatcli.analyze.layers import STUB_TYPES, Layer
from hatcli.analyze.measure import OUTPUT, LayerStats
from hatcli.analyze.switches import clipped_at, enabled_only
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.observer import FixedScaleObserver, MSEObserver, PercentileObserver

PERCENTILES = (99.99, 99.9, 99.0)
LOW_SQNR_DB = 20.0
"""A single-op SQNR below this stands out (about 3 bits of the 8 left)."""
HALF_RANGE = 127.5


@dataclass
class Candidate:
    """One way to change a layer's quantization, as spec rules and as its emulation."""

    label: str
    rules: dict[str, fragment.Setting]
    float_ops: list[str] = field(default_factory=list)
    clip: float | None = None  # the output quantizer's range [-clip, clip]
    unquantized_output: bool = False

    @property
    def text(self) -> str:
        return fragment.render(self.rules)


@dataclass
class Suggestion:
    """The candidate chosen for a layer, and what each candidate measured."""

    layer: str
    candidate: Candidate
    metric: float | None  # the stage's metric with it (None: not measured)
    tried: list[tuple[Candidate, float]]
    eager_float: bool = False  # keeps ops float in an eagerly prepared model
    improves: bool = True  # beats the model as it is (unknown without a metric: True)

    @property
    def fragment(self) -> str:
        return self.candidate.text


MSE_SAMPLE = 1 << 16
"""The MSE search (64 clipping points) runs on a strided sample of at most this many
values; percentiles use the whole sample."""


def _sample_clip(observer: Any, values: torch.Tensor) -> float:
    """The clipping point ``observer`` would compute from ``values`` as one batch."""
    _, high = observer._batch_min_max(values)
    return float(high)


def _round_up(value: float) -> float:
    """``value`` rounded up to 4 significant digits (a scale the user can read)."""
    if value <= 0 or not math.isfinite(value):
        return value
    digits = 3 - math.floor(math.log10(value))
    factor = 10.0**digits
    return math.ceil(value * factor) / factor


def _tensor_float_ops(
    name: str, layers: dict[str, Layer], readers: dict[str, list[str]]
) -> list[str]:
    """``name`` and the ops that read its output, through ops that do not quantize their
    own output, so that the tensor stays float all the way."""
    found, frontier = [name], [name]
    while frontier:
        for reader in readers.get(frontier.pop(), []):
            if reader == OUTPUT or reader in found or layers[reader].is_island:
                continue
            found.append(reader)
            if layers[reader].output_quantizer is None:
                frontier.append(reader)
    return found


def _float_rules(ops: list[str], layers: dict[str, Layer]) -> dict[str, fragment.Setting]:
    return {n: "float" for n in ops if layers[n].type not in STUB_TYPES and layers[n].quantizers}


def candidates(
    layer: Layer,
    stats: LayerStats,
    culprit: str,
    layers: dict[str, Layer],
    readers: dict[str, list[str]],
) -> list[Candidate]:
    """The candidate rules for ``layer``, in order of preference (least change first)."""
    found: list[Candidate] = []
    fq = layer.output_quantizer
    observer = fq.activation_post_process if fq is not None else None
    values = stats.values()
    if (
        culprit == "activations"
        and fq is not None
        and fq.ch_axis is None
        and not isinstance(observer, FixedScaleObserver)
        and values.numel()
    ):
        for p in PERCENTILES:
            clip = _sample_clip(PercentileObserver(p), values)
            rule = {"activation_observer": "percentile", "percentile": p}
            found.append(Candidate(f"percentile observer ({p})", {layer.name: rule}, clip=clip))
        clip = _sample_clip(MSEObserver(), values[:: max(1, values.numel() // MSE_SAMPLE)])
        found.append(
            Candidate("MSE observer", {layer.name: {"activation_observer": "mse"}}, clip=clip)
        )
        scale = _round_up(float(values.abs().max()) / HALF_RANGE)
        if scale > 0:
            found.append(
                Candidate(
                    f"fixed scale {scale:.6g}",
                    {layer.name: {"fixed_scale": scale}},
                    clip=scale * HALF_RANGE,
                )
            )
    if (
        fq is not None
        and layer.weights
        and set(readers.get(layer.name, []))
        <= {OUTPUT}
        | {
            r
            for r in readers.get(layer.name, [])
            if r in layers and layers[r].type == "DeQuantStub"
        }
    ):
        found.append(Candidate("int32 output", {layer.name: "int8_out"}, unquantized_output=True))
    if culprit == "activations" and layer.type != "QuantStub" and fq is not None:
        ops = _tensor_float_ops(layer.name, layers, readers)
        if len(ops) > 1:
            label = "keep it float with the ops that read it"
            found.append(Candidate(label, _float_rules(ops, layers), float_ops=ops))
    if layer.type not in STUB_TYPES:
        found.append(Candidate("keep it float", {layer.name: "float"}, float_ops=[layer.name]))
    return [c for c in found if c.rules]


def _stays_float(
    name: str, ops: set[str], layers: dict[str, Layer], readers: dict[str, list[str]]
) -> bool:
    """Whether every reader of ``name``'s output is float once ``ops`` are."""
    for reader in readers.get(name, []):
        if reader == OUTPUT or reader in ops or layers[reader].is_island:
            continue
        if layers[reader].type == "DeQuantStub" and _stays_float(reader, ops, layers, readers):
            continue
        return False
    return True


@contextmanager
def emulated(
    candidate: Candidate,
    layer: Layer,
    layers: dict[str, Layer],
    readers: dict[str, list[str]],
    quantizers: list[FakeQuantize],
) -> Iterator[None]:
    """The model as the candidate's rule would make it (until the block ends)."""
    off: set[int] = set()
    ops = set(candidate.float_ops)
    for name in candidate.float_ops:
        op = layers[name]
        off |= {id(fq) for fq in op.weights}
        if _stays_float(name, ops, layers, readers):
            off |= {id(fq) for fq in op.activations}
    if candidate.unquantized_output and layer.output_quantizer is not None:
        off.add(id(layer.output_quantizer))
    ranges = {}
    if candidate.clip is not None and layer.output_quantizer is not None:
        ranges[layer.output_quantizer] = candidate.clip
    with (
        enabled_only(quantizers, [fq for fq in quantizers if id(fq) not in off]),
        clipped_at(ranges),
    ):
        yield


def guess(options: list[Candidate], stats: LayerStats) -> Candidate | None:
    """Without metric passes: the option the single-op figures point at, or ``None`` when
    nothing in them stands out (an outlier channel, clipping, weights rounding to zero,
    a single-op SQNR under 20 dB)."""
    spread, clipped = stats.activation_spread, stats.clipped_fraction
    outlier = math.isfinite(spread) and spread >= SPREAD_OUTLIER
    clipping = math.isfinite(clipped) and clipped >= CLIPPED_NOTABLE
    zeroed = math.isfinite(stats.weights_zeroed) and stats.weights_zeroed >= ZEROED_NOTABLE
    if not (outlier or clipping or zeroed or stats.single.sqnr_db < LOW_SQNR_DB):
        return None
    by_kind = {
        "tensor": [o for o in options if len(o.float_ops) > 1],
        "fixed": [o for o in options if o.label.startswith("fixed scale")],
        "percentile": [o for o in options if o.label.startswith("percentile")],
        "float": [o for o in options if len(o.float_ops) == 1],
    }
    order = ["tensor"] if outlier else ["fixed"] if clipping else []
    for kind in [*order, "percentile", "float", "tensor"]:
        if by_kind[kind]:
            return by_kind[kind][0]
    return options[-1]


def choose(
    layer: Layer,
    options: list[Candidate],
    evaluate: Callable[[], float] | None,
    baseline: float,
    choice: MetricChoice,
    layers: dict[str, Layer],
    readers: dict[str, list[str]],
    quantizers: list[FakeQuantize],
    eager: bool,
    stats: LayerStats,
) -> Suggestion | None:
    """The best of ``options`` by the metric (the first of equals), against ``baseline``
    (the metric as the model is); without ``evaluate``, ``guess``'s pick."""
    if not options:
        return None
    tried: list[tuple[Candidate, float]] = []
    if evaluate is not None:
        for option in options:
            with emulated(option, layer, layers, readers, quantizers):
                tried.append((option, evaluate()))
        best, metric = tried[0]
        for option, value in tried[1:]:
            if choice.cost(metric, value) < 0:
                best, metric = option, value
        chosen: Candidate = best
        measured: float | None = metric
    else:
        guessed = guess(options, stats)
        if guessed is None:
            return None
        chosen, measured = guessed, None
    fragment.check(chosen.text)
    improves = measured is None or choice.cost(baseline, measured) < 0
    eager_float = eager and bool(chosen.float_ops)
    return Suggestion(layer.name, chosen, measured, tried, eager_float, improves)
