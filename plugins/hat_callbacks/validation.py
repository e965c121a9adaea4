"""Validation: evaluate the model on a data split every N epochs or steps and at the end."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sized
from typing import Any, cast

import torch

from hatcli import plugins
from hatcli.engine.build import split_node
from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.engine.data_checks import (
    checked_forward,
    data_name,
    named_batches,
    refuse_non_finite_inputs,
)
from hatcli.engine.distributed import any_process, min_over_processes
from hatcli.engine.metric import MeanLoss, Metric, TopKAccuracy
from hatcli.errors import DataError, InputError


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
        self.owed = False
        self.mean_loss = MeanLoss()
        self.metrics: list[Metric] = [TopKAccuracy(1), self.mean_loss, *(metrics or [])]

    def metric_names(self) -> list[str]:
        return [name for metric in self.metrics for name in metric.names()]

    def check(self, ctx: LoopContext) -> None:
        if self.split not in ctx.data_loaders:
            known = ", ".join(sorted(ctx.data_loaders)) or "none"
            raise InputError(
                f"Validation: no data loader {self.split!r} in this stage (it has: {known})"
            )
        loader = ctx.data_loaders[self.split]
        samples = len(cast(Sized, loader.dataset))
        data = data_name(loader, self.split)
        if samples == 0:
            raise InputError(f"Validation: {data} has no samples to evaluate")
        # Without padding each process takes every world_size-th sample; the first most.
        per_process = -(-samples // ctx.world_size)
        if loader.drop_last and loader.batch_size and per_process < loader.batch_size:
            raise InputError(
                f"Validation: {data} gives no batch ({samples} samples, fewer than "
                f"batch_size {loader.batch_size}, with drop_last)"
            )

    def on_loop_begin(self, ctx: LoopContext) -> None:
        if self.owed:  # a signal stopped this validation before the run was resumed
            self.run(ctx)

    def on_step_end(self, ctx: LoopContext) -> None:
        if self.interval_by == "step" and ctx.global_step % self.every == 0:
            self.run(ctx)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        if self.interval_by == "epoch" and ctx.step_in_epoch == 0 and ctx.epoch % self.every == 0:
            self.run(ctx)

    def on_loop_end(self, ctx: LoopContext) -> None:
        if self.at_end and (ctx.metrics_step != ctx.global_step or not ctx.metrics):
            self.run(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"owed": self.owed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.owed = bool(state.get("owed", False))

    @torch.no_grad()
    def run(self, ctx: LoopContext) -> dict[str, float] | None:
        """Evaluate and publish the results in ``ctx.metrics``; ``None`` when a signal
        stopped it (the checkpoint saved next owes it, and its resume runs it first)."""
        was_training = ctx.model.training
        ctx.model.eval()
        try:
            return self._evaluate(ctx)
        finally:
            ctx.model.train(was_training)

    def _evaluate(self, ctx: LoopContext) -> dict[str, float] | None:
        self.owed = False
        for metric in self.metrics:
            metric.reset()
        loader = ctx.data_loaders[self.split]
        data = data_name(loader, self.split)
        # Ranks may have one batch more or less; they agree on stopping within the rest.
        agreed = min_over_processes(len(loader))
        for index, (inputs, targets) in enumerate(named_batches(loader, self.split)):
            if index < agreed and any_process(ctx.stop_requested()):
                self.owed = True
                return None
            inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
            when = f"batch {index + 1} of the validation after step {ctx.global_step}"
            outputs, loss = checked_forward(ctx.model, ctx.loss_fn, inputs, targets, data, when)
            if not math.isfinite(float(loss)):
                refuse_non_finite_inputs(inputs, data, when)
            for metric in self.metrics:
                metric.update(outputs, targets, loss)
        results: dict[str, float] = {}
        for metric in self.metrics:
            metric.reduce_over_processes()
            results.update(metric.compute())
        if self.mean_loss.count == 0:  # check() saw samples; e.g. a dataset that shrank
            raise DataError(f"{data} gave no samples to evaluate")
        if not math.isfinite(results["loss"]) and ctx.is_main:
            warnings.warn(
                f"{self.split}: the validation loss is {results['loss']} at epoch {ctx.epoch}, "
                f"step {ctx.global_step} (non-finite model outputs on finite inputs)",
                RuntimeWarning,
                stacklevel=2,
            )
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
