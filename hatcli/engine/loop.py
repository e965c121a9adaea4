"""The training loop. Everything else (validation, checkpoints, logging) is a callback."""

from __future__ import annotations

import math
from typing import Any

import torch

from hatcli.engine.context import LoopContext
from hatcli.engine.data_checks import all_finite, checked_forward, data_name, named_batches
from hatcli.engine.interrupt import GracefulInterrupt, Interrupted
from hatcli.engine.sampler import EpochSampler
from hatcli.errors import DataError, RunError


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    return batch


class Trainer:
    """One process, one device: forward, loss, backward, optimizer step, per batch.

    Subclasses change ``step`` (what one batch does); the loop keeps the position
    (epoch, step in epoch, global step) that checkpoints save and resume continues.
    """

    needs_optimizer = True

    def fit(self, ctx: LoopContext) -> None:
        with GracefulInterrupt() as interrupt:
            # Long work inside an event (a validation) polls this to stop early.
            ctx.stop_requested = lambda: interrupt.signum is not None
            self.emit("on_loop_begin", ctx)
            while ctx.trains and not self.done(ctx):
                self.run_epoch(ctx, interrupt)
        ctx.stop_requested = lambda: False
        ctx.finished = True
        self.end_loop(ctx)
        self.emit("on_loop_end", ctx)

    def run_epoch(self, ctx: LoopContext, interrupt: GracefulInterrupt) -> None:
        loader = ctx.data_loaders["train"]
        sampler = getattr(loader, "sampler", None)
        skip = ctx.step_in_epoch  # resumed mid-epoch: these batches were trained before
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(ctx.epoch, start=skip * (loader.batch_size or 1))
            batches = enumerate(named_batches(loader, "train"), start=skip)
        else:
            batches = ((i, b) for i, b in enumerate(named_batches(loader, "train")) if i >= skip)
        self.begin_epoch(ctx)
        self.emit("on_epoch_begin", ctx)
        for index, batch in batches:
            self.emit("on_step_begin", ctx)
            self.step(ctx, to_device(batch, ctx.device))
            ctx.global_step += 1
            ctx.step_in_epoch = index + 1
            self.after_step(ctx)
            self.emit("on_step_end", ctx)
            self.stop_if_signalled(ctx, interrupt)
            if ctx.num_steps and ctx.global_step >= ctx.num_steps:
                break
        if ctx.step_in_epoch >= len(loader):
            self.end_epoch(ctx)
            ctx.epoch += 1
            ctx.step_in_epoch = 0
        self.emit("on_epoch_end", ctx)
        self.stop_if_signalled(ctx, interrupt)

    def stop_if_signalled(self, ctx: LoopContext, interrupt: GracefulInterrupt) -> None:
        """After an event: on a signal, let callbacks save (``on_interrupt``), then stop."""
        if interrupt.signum is not None:
            self.emit("on_interrupt", ctx)
            raise Interrupted(interrupt.signum, ctx.global_step)

    def begin_epoch(self, ctx: LoopContext) -> None:
        ctx.model.train()

    def step(self, ctx: LoopContext, batch: Any) -> None:
        inputs, targets = batch
        assert ctx.optimizer is not None
        ctx.optimizer.zero_grad(set_to_none=True)
        data = data_name(ctx.data_loaders.get("train"), "train")
        when = f"epoch {ctx.epoch}, step {ctx.global_step + 1}"
        model = ctx.forward_model or ctx.model
        _, loss = checked_forward(model, ctx.loss_fn, inputs, targets, data, when, ctx.model)
        value = loss.item()
        if not math.isfinite(value):
            if not all_finite(inputs):
                raise DataError(f"{data} has non-finite inputs in this batch ({when})")
            raise RunError(
                f"loss became {value} at epoch {ctx.epoch}, step {ctx.global_step + 1}; "
                "nothing was saved for this step (try a lower learning rate)"
            )
        loss.backward()
        ctx.optimizer.step()
        ctx.loss = value
        ctx.batch_size = int(targets.shape[0])

    def after_step(self, ctx: LoopContext) -> None:
        if ctx.lr_scheduler is not None and ctx.scheduler_interval == "step":
            ctx.lr_scheduler.step()

    def end_epoch(self, ctx: LoopContext) -> None:
        if ctx.lr_scheduler is not None and ctx.scheduler_interval == "epoch":
            ctx.lr_scheduler.step()

    def end_loop(self, ctx: LoopContext) -> None:
        """After the last step, before ``on_loop_end``."""

    @staticmethod
    def done(ctx: LoopContext) -> bool:
        if ctx.num_steps:
            return ctx.global_step >= ctx.num_steps
        return ctx.epoch >= (ctx.num_epochs or 0)

    @staticmethod
    def emit(event: str, ctx: LoopContext) -> None:
        for callback in ctx.callbacks:
            getattr(callback, event)(ctx)
