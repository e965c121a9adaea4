"""Validation: evaluate the model on a data split every N epochs or steps and at the end."""

from __future__ import annotations

from typing import Any

import torch

from hatcli import plugins
from hatcli.engine.build import split_node
from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.engine.metric import MeanLoss, Metric, TopKAccuracy
from hatcli.errors import InputError


class Validation(Callback):
    order = 0

    def __init__(
        self,
        data: str = "val",
        every: int = 1,
        interval_by: str = "epoch",
        at_end: bool = True,
        metrics: list[Metric] | None = None,
    ) -> None:
        self.split = data
        self.every = every
        self.interval_by = interval_by
        self.at_end = at_end
        self.metrics: list[Metric] = [TopKAccuracy(1), MeanLoss(), *(metrics or [])]

    def metric_names(self) -> list[str]:
        return [name for metric in self.metrics for name in metric.names()]

    def check(self, ctx: LoopContext) -> None:
        if self.split not in ctx.data_loaders:
            known = ", ".join(sorted(ctx.data_loaders)) or "none"
            raise InputError(
                f"Validation: no data loader {self.split!r} in this stage (it has: {known})"
            )

    def on_step_end(self, ctx: LoopContext) -> None:
        if self.interval_by == "step" and ctx.global_step % self.every == 0:
            self.run(ctx)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        if self.interval_by == "epoch" and ctx.step_in_epoch == 0 and ctx.epoch % self.every == 0:
            self.run(ctx)

    def on_loop_end(self, ctx: LoopContext) -> None:
        if self.at_end and (ctx.metrics_step != ctx.global_step or not ctx.metrics):
            self.run(ctx)

    @torch.no_grad()
    def run(self, ctx: LoopContext) -> dict[str, float]:
        was_training = ctx.model.training
        ctx.model.eval()
        for metric in self.metrics:
            metric.reset()
        for inputs, targets in ctx.data_loaders[self.split]:
            inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
            outputs = ctx.model(inputs)
            loss = ctx.loss_fn(outputs, targets)
            for metric in self.metrics:
                metric.update(outputs, targets, loss)
        results: dict[str, float] = {}
        for metric in self.metrics:
            metric.reduce_over_processes()
            results.update(metric.compute())
        ctx.model.train(was_training)
        ctx.metrics = results
        ctx.metrics_step = ctx.global_step
        ctx.log({"event": "val", "split": self.split, **results})
        return results


def build_validation(metrics: list[Any] | None = None, **params: Any) -> Validation:
    built = []
    for node in metrics or []:
        name, args = split_node(node)
        built.append(plugins.get_component("metrics", name).factory(**args))
    return Validation(metrics=built, **params)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "data": {"type": "string", "default": "val", "description": "Data split to evaluate."},
        "every": {"type": "integer", "minimum": 1, "default": 1},
        "interval_by": {"enum": ["epoch", "step"], "default": "epoch"},
        "at_end": {"type": "boolean", "default": True},
        "metrics": {
            "type": "array",
            "items": {"x-hat-kind": "metrics"},
            "description": "Metrics beyond the built-in accuracy and loss.",
        },
    },
}
