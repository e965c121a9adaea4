"""The stage's validation metric on the analysis batches, computed as its ``Validation``
callback computes it (the same metric objects: exact counts over the samples)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hatcli.engine.build import build_component, split_node
from hatcli.engine.metric import MeanLoss, Metric, TopKAccuracy
from hatcli.spec import defaults
from hatcli.spec.spec import Spec, StageSpec

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MetricChoice:
    """Which number of the validation results the analysis ranks by, and its direction."""

    key: str
    higher_is_better: bool

    def cost(self, reference: float, value: float) -> float:
        """How much worse ``value`` is than ``reference`` (positive: worse), in the
        metric's units."""
        return reference - value if self.higher_is_better else value - reference


class Evaluator:
    """Accumulates the stage's validation metrics over batches of model outputs."""

    def __init__(self, make_metrics: Callable[[], list[Metric]], loss_fn: Any) -> None:
        self.make_metrics = make_metrics
        self.loss_fn = loss_fn
        self.metrics = make_metrics()
        self.reset()

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()

    def add(self, outputs: Any, targets: torch.Tensor) -> None:
        loss = self.loss_fn(outputs, targets)
        for metric in self.metrics:
            metric.update(outputs, targets, loss)

    def results(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for metric in self.metrics:
            found.update(metric.compute())
        return found

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """The metrics of ``model`` (as it is set now) over ``batches``."""
        self.reset()
        for inputs, targets in batches:
            self.add(model(inputs), targets)
        return self.results()


def _callback_nodes(stage: StageSpec, kind: str) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for index, node in enumerate(stage.get("callbacks") or []):
        name, params = split_node(node)
        if name == kind:
            found.append((index, params))
    return found


def stage_evaluator(spec: Spec, stage: StageSpec) -> tuple[Callable[[], Evaluator], MetricChoice]:
    """A factory of evaluators of the stage's validation metrics, and the metric to rank
    by: the ``Checkpoint`` callback's ``monitor_metric_key`` (with its ``mode``), else
    ``accuracy``."""
    validations = _callback_nodes(stage, "Validation")

    def make_metrics() -> list[Metric]:
        if not validations:
            return [TopKAccuracy(1), MeanLoss()]
        index, _ = validations[0]
        node = (stage.get("callbacks") or [])[index]
        callback = build_component(
            "callbacks", node, stage.where("callbacks", index), spec.positions
        )
        metrics: list[Metric] = callback.metrics
        return metrics

    loss_fn = build_component(
        "losses", stage.get("loss", defaults.LOSS), stage.where("loss"), spec.positions
    )
    names = [n for m in make_metrics() for n in m.names()]
    key, higher = ("accuracy" if "accuracy" in names else names[0]), True
    for _, params in _callback_nodes(stage, "Checkpoint"):
        monitor = params.get("monitor_metric_key")
        if monitor in names:
            key, higher = str(monitor), params.get("mode", "max") == "max"
            break
    if key == "loss":
        higher = False
    return (lambda: Evaluator(make_metrics, loss_fn)), MetricChoice(key, higher)


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
