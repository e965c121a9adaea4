"""Per-layer measurements: float, QAT and integer models with the same weights, run on
the same batches, compared op by op.

- **float**: the QAT model with every fake quantization off.
- **QAT**: fake quantization on, the float simulation (``float_simulation()``: the
  forward QAT trains with).
- **integer**: ``convert`` of the QAT model (what ``QAT2Quantize`` builds).

*Accumulated* compares each op's integer output with its float output: the model up to
that op quantized. *Single-op* runs the op alone on the float model's input to it, with
only its own quantizers on (weights and output), so that the op that breaks stands out
from the ops that inherit its error. An op's input quantization belongs to the op that
produced the input (its output quantizer), so nothing is counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hatcli.analyze.capture import Call, Recorder, Value, first_tensor, tensors, to_value
from hatcli.analyze.evaluate import Batch, Evaluator
from hatcli.analyze.layers import Layer
from hatcli.analyze.metrics import (
    ErrorStats,
    channel_abs_max,
    clipped_count,
    spread,
    zeroed_fraction,
)
from hatcli.analyze.switches import enabled_only
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.nn.qat.integer_eval import float_simulation

SAMPLE_SIZE = 1 << 18
"""At most this many float output values of each layer are kept (a strided sample of
every batch) for its histogram and for trying other clipping ranges."""

OUTPUT = "<model output>"


@dataclass
class LayerStats:
    """Everything measured about one layer over the batches."""

    accumulated: ErrorStats = field(default_factory=ErrorStats)
    qat: ErrorStats = field(default_factory=ErrorStats)
    single: ErrorStats = field(default_factory=ErrorStats)
    single_weight: ErrorStats = field(default_factory=ErrorStats)
    single_activation: ErrorStats = field(default_factory=ErrorStats)
    calls: int = 0
    clipped: int = 0
    checked: int = 0  # float output values compared with the output quantizer's range
    channel_max: torch.Tensor | None = None  # per channel max |x| of the float output
    input_scale: float | None = None
    output_scale: float | None = None
    output_kind: str = "float"  # int8, int32 (per channel) or float
    sample: list[torch.Tensor] = field(default_factory=list)
    weight_spread: float = math.nan
    weights_zeroed: float = math.nan
    weight_channel_max: torch.Tensor | None = None

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.checked if self.checked else math.nan

    @property
    def activation_spread(self) -> float:
        return spread(self.channel_max) if self.channel_max is not None else math.nan

    def values(self) -> torch.Tensor:
        """The sample of float output values."""
        return torch.cat(self.sample) if self.sample else torch.zeros(0)


@dataclass
class Measurement:
    """The per-layer statistics, the model output's, the three models' metrics and how
    the data flows between layers."""

    layers: dict[str, LayerStats]
    output: LayerStats
    metrics: dict[str, dict[str, float]]  # "float" | "qat" | "integer" -> results
    readers: dict[str, list[str]]  # layer -> layers that read its output (OUTPUT: the model's)
    order: list[str]  # layers in execution order
    integer_note: str | None = None


def _scale_of(value: Value) -> tuple[float | None, str]:
    if value.scale is None:
        return None, "float"
    if value.axis is None:
        return float(value.scale), "int8"
    return None, "int32"


def _flat_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return to_value(out).data.flatten()
    if isinstance(out, (list, tuple)):
        parts = [_flat_output(o) for o in out]
    elif isinstance(out, dict):
        parts = [_flat_output(o) for o in out.values()]
    else:
        return torch.zeros(0)
    return torch.cat(parts) if parts else torch.zeros(0)


class _WeightInputs:
    """The tensors the weight quantizers see in one QAT pass (forward pre-hooks)."""

    def __init__(self, layers: list[Layer]) -> None:
        self.seen: dict[int, torch.Tensor] = {}
        self.handles = []
        for layer in layers:
            for fq in layer.weights:

                def hook(mod: nn.Module, args: tuple[Any, ...], key: int = id(fq)) -> None:
                    self.seen.setdefault(key, args[0].detach().clone())

                self.handles.append(fq.register_forward_pre_hook(hook))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _weight_stats(stats: LayerStats, layer: Layer, seen: dict[int, torch.Tensor]) -> None:
    spreads, zeroed = [], []
    for fq in layer.weights:
        obs = fq.activation_post_process
        channel_max = torch.maximum(-obs.min_val, obs.max_val).float()
        spreads.append(spread(channel_max))
        stats.weight_channel_max = channel_max
        weight = seen.get(id(fq))
        if weight is not None:
            zeroed.append(zeroed_fraction(weight, fq.scale, fq.ch_axis))
    stats.weight_spread = max(spreads) if spreads else math.nan
    stats.weights_zeroed = max(zeroed) if zeroed else math.nan


class Measurer:
    """Runs the three models over the batches and fills a ``Measurement``."""

    def __init__(
        self,
        model: nn.Module,
        integer: nn.Module,
        layers: list[Layer],
        quantizers: list[FakeQuantize],
        make_evaluator: Callable[[], Evaluator],
    ) -> None:
        self.model, self.integer, self.layers = model, integer, layers
        self.quantizers = quantizers
        self.by_name = {layer.name: layer for layer in layers}
        self.float_rec = Recorder(model, layers, keep_inputs=True)
        self.qat_rec = Recorder(model, layers, keep_inputs=False)
        self.int_rec = Recorder(integer, layers, keep_inputs=False)
        self.evaluators = {k: make_evaluator() for k in ("float", "qat", "integer")}
        self.stats = {layer.name: LayerStats() for layer in layers}
        self.output = LayerStats()
        self.readers: dict[str, list[str]] = {}
        self.order: list[str] = []
        self.integer_note: str | None = None
        self.strides: dict[str, int] = {}

    @torch.no_grad()
    def run(self, batches: Sequence[Batch], advance: Callable[[], None]) -> Measurement:
        for index, (inputs, targets) in enumerate(batches):
            self._batch(index, len(batches), inputs, targets)
            advance()
        metrics = {k: e.results() for k, e in self.evaluators.items()}
        return Measurement(
            self.stats, self.output, metrics, self.readers, self.order, self.integer_note
        )

    def _batch(self, index: int, count: int, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        with enabled_only(self.quantizers, []):
            float_out = self.float_rec.run(inputs)
        weights = _WeightInputs(self.layers) if index == 0 else None
        try:
            with enabled_only(self.quantizers, self.quantizers), float_simulation():
                qat_out = self.qat_rec.run(inputs)
        finally:
            if weights is not None:
                weights.close()
        int_out = self._integer_run(inputs)
        for name, e in zip(("float", "qat", "integer"), (float_out, qat_out, int_out), strict=True):
            self.evaluators[name].add(e, targets)
        if index == 0:
            self._first_batch(float_out, weights)
        self._compare(index, count, float_out, qat_out, int_out)

    def _integer_run(self, inputs: torch.Tensor) -> Any:
        """The integer model's output; if it cannot run (e.g. an eager model's float island
        fed integers), QAT eval's, which computes each op with its integer twin."""
        if self.integer_note is None:
            try:
                return self.int_rec.run(inputs)
            except Exception as exc:  # the model's own code: any error
                self.integer_note = (
                    f"the integer model does not run ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); its column shows QAT "
                    "eval, which computes each quantized op with its integer twin"
                )
                self.int_rec = Recorder(self.model, self.layers, keep_inputs=False)
        with enabled_only(self.quantizers, self.quantizers):
            return self.int_rec.run(inputs)

    def _first_batch(self, float_out: Any, weights: _WeightInputs | None) -> None:
        calls = self.float_rec.calls
        self.order = list(self.float_rec.order)
        for layer in self.layers:
            layer.order = self.order.index(layer.name) if layer.name in self.order else -1
        writes = {n: set().union(*(c.writes for c in cs)) for n, cs in calls.items()}
        reads = {n: set().union(*(c.reads for c in cs)) for n, cs in calls.items()}
        out_storage = {int(t.untyped_storage().data_ptr()) for t in tensors(float_out)} - {0}
        for name in self.order:
            found = [m for m in self.order if m != name and reads[m] & writes[name]]
            if writes[name] & out_storage:
                found.append(OUTPUT)
            self.readers[name] = found
        for layer in self.layers:
            if weights is not None and layer.weights:
                _weight_stats(self.stats[layer.name], layer, weights.seen)

    def _compare(self, index: int, count: int, float_out: Any, qat_out: Any, int_out: Any) -> None:
        reference = _flat_output(float_out)
        self.output.accumulated.update(reference, _flat_output(int_out))
        self.output.qat.update(reference, _flat_output(qat_out))
        self.output.calls += 1
        for layer in self.layers:
            f_calls = self.float_rec.calls.get(layer.name, [])
            q_calls = self.qat_rec.calls.get(layer.name, [])
            i_calls = self.int_rec.calls.get(layer.name, [])
            stats = self.stats[layer.name]
            for i, call in enumerate(f_calls):
                if call.output is None:
                    continue
                ref = call.output.data
                stats.calls += 1
                scale_value = i_calls[i].output if i < len(i_calls) else None
                scale, axis = (
                    (scale_value.scale, scale_value.axis)
                    if scale_value is not None
                    else (None, None)
                )
                if scale_value is not None:
                    stats.output_scale, stats.output_kind = _scale_of(scale_value)
                if i < len(i_calls) and i_calls[i].output is not None:
                    stats.accumulated.update(ref, i_calls[i].output.data, scale, axis)  # type: ignore[union-attr]
                if i < len(q_calls) and q_calls[i].output is not None:
                    stats.qat.update(ref, q_calls[i].output.data)  # type: ignore[union-attr]
                self._single(layer, stats, call, scale, axis)
                self._ranges(layer, stats, ref, index, count)
            if i_calls and stats.input_scale is None:
                stats.input_scale = i_calls[0].input_scale

    def _single(
        self,
        layer: Layer,
        stats: LayerStats,
        call: Call,
        scale: torch.Tensor | None,
        axis: int | None,
    ) -> None:
        ref = call.output.data  # type: ignore[union-attr]
        if layer.module is None or not layer.quantizers:
            stats.single.update(ref, ref, scale, axis)  # nothing of its own to quantize
            return
        runs = [(stats.single, layer.quantizers)]
        if layer.weights and layer.activations:
            runs += [
                (stats.single_weight, layer.weights),
                (stats.single_activation, layer.activations),
            ]
        for target, on in runs:
            with enabled_only(self.quantizers, on), float_simulation():
                out = first_tensor(layer.module(*call.args, **call.kwargs))
            if out is not None:
                target.update(
                    ref, to_value(out).data, scale if target is stats.single else None, axis
                )

    def _ranges(
        self, layer: Layer, stats: LayerStats, ref: torch.Tensor, index: int, count: int
    ) -> None:
        fq = layer.output_quantizer
        if fq is not None and fq.ch_axis is None:
            stats.clipped += clipped_count(ref, fq.scale)
            stats.checked += ref.numel()
        channel = channel_abs_max(ref)
        if stats.channel_max is None or stats.channel_max.shape != channel.shape:
            stats.channel_max = channel if stats.channel_max is None else stats.channel_max
        else:
            stats.channel_max = torch.maximum(stats.channel_max, channel)
        if layer.name not in self.strides:
            self.strides[layer.name] = max(1, math.ceil(ref.numel() * count / SAMPLE_SIZE))
        stats.sample.append(ref.flatten()[:: self.strides[layer.name]].clone())
