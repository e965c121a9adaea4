"""The training loop. Everything else (validation, checkpoints, logging) is a callback."""

from __future__ import annotations

import math
from typing import Any

import torch

from hatcli.engine.context import LoopContext
from hatcli.engine.sampler import EpochSampler
from hatcli.errors import RunError


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    return batch


class Trainer:
    """One process, one device: forward, loss, backward, optimizer step, per batch."""

    needs_optimizer = True

    def fit(self, ctx: LoopContext) -> None:
        self._emit("on_loop_begin", ctx)
        if ctx.trains and ctx.total_steps > 0:
            self._train(ctx)
        self._emit("on_loop_end", ctx)

    def _train(self, ctx: LoopContext) -> None:
        loader = ctx.data_loaders["train"]
        while not self._done(ctx):
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(ctx.epoch)
            ctx.model.train()
            self._emit("on_epoch_begin", ctx)
            for step_in_epoch, batch in enumerate(loader):
                if step_in_epoch < ctx.step_in_epoch:
                    continue  # resumed mid-epoch: these batches were trained before
                ctx.step_in_epoch = step_in_epoch
                self.train_step(ctx, to_device(batch, ctx.device))
                ctx.step_in_epoch = step_in_epoch + 1
                if ctx.num_steps and ctx.global_step >= ctx.num_steps:
                    break
            if ctx.step_in_epoch >= len(loader):
                if ctx.lr_scheduler is not None and ctx.scheduler_interval == "epoch":
                    ctx.lr_scheduler.step()
                ctx.epoch += 1
                ctx.step_in_epoch = 0
            self._emit("on_epoch_end", ctx)

    def train_step(self, ctx: LoopContext, batch: Any) -> None:
        inputs, targets = batch
        assert ctx.optimizer is not None
        self._emit("on_step_begin", ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        outputs = ctx.model(inputs)
        loss = ctx.loss_fn(outputs, targets)
        value = loss.item()
        if not math.isfinite(value):
            raise RunError(
                f"loss became {value} at epoch {ctx.epoch}, step {ctx.global_step}; "
                "nothing was saved for this step (try a lower learning rate)"
            )
        loss.backward()
        ctx.optimizer.step()
        ctx.global_step += 1
        ctx.loss = value
        ctx.batch_size = int(targets.shape[0])
        if ctx.lr_scheduler is not None and ctx.scheduler_interval == "step":
            ctx.lr_scheduler.step()
        self._emit("on_step_end", ctx)

    @staticmethod
    def _done(ctx: LoopContext) -> bool:
        if ctx.num_steps:
            return ctx.global_step >= ctx.num_steps
        return ctx.epoch >= (ctx.num_epochs or 0)

    @staticmethod
    def _emit(event: str, ctx: LoopContext) -> None:
        for callback in ctx.callbacks:
            getattr(callback, event)(ctx)
