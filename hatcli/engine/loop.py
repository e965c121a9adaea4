"""The training loop. Everything else (validation, checkpoints, logging) is a callback."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from hatcli.engine import distributed
from hatcli.engine.context import LoopContext
from hatcli.engine.data_checks import (
    data_name,
    named_batches,
    refuse_non_finite_inputs,
)
from hatcli.engine.distributed import any_process
from hatcli.engine.interrupt import GracefulInterrupt, Interrupted
from hatcli.engine.sampler import EpochSampler
from hatcli.errors import RunError


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    return batch


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(ctx: LoopContext) -> torch.autocast:
    """The training step's ``torch.autocast`` for the stage's ``amp`` (disabled: ``off``)."""
    dtype = AMP_DTYPES.get(ctx.amp)
    return torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None)


class Trainer:
    """What a ``hat_register_trainers`` factory returns, and hat's own loop: one process,
    one device; forward, loss, backward, optimizer step, per batch.

    Subclass it. Override ``step`` to change what one batch does (the loop keeps the
    position, epoch, step in epoch and global step, that checkpoints save and resume
    continues), the ``begin_epoch`` / ``after_step`` / ``end_epoch`` / ``end_loop`` hooks
    around it, or ``fit`` for a loop of your own. hat calls, in this order:
    ``setup(device)``, ``prepare_model(model)`` while it builds the stage, then
    ``fit(ctx)``.
    """

    needs_optimizer: bool = True
    """Whether a stage that trains with this trainer must set ``optimizer``
    (``hat validate`` says so when it is missing); false for a calibration pass."""

    supports_distributed: bool = False
    """Whether this trainer can train in several processes (``hat train --nproc N`` or
    torchrun); a stage that trains, launched so with a trainer that cannot, is an input
    error. A stage that only evaluates (``num_epochs: 0``) runs with any trainer: each
    process validates its share of the data and the metrics are reduced."""

    def setup(self, device: torch.device) -> None:
        """First, before the model, data and callbacks are built (e.g. join the process
        group); ``device`` is the stage's, already checked. An ``InputError`` raised here
        is reported at the stage's ``trainer``. Here: join the launcher's group, if any."""
        distributed.join_launched_group(device)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model after its convert pipeline (and a resumed checkpoint's weights),
        before it moves to the device and the optimizer gets its parameters; return it,
        changed or replaced (e.g. BatchNorm made SyncBatchNorm)."""
        return model

    def fit(self, ctx: LoopContext) -> None:
        """Run the stage: train until ``num_epochs`` or ``num_steps`` (nothing when
        neither is set), emitting every callback event, then set ``ctx.finished``."""
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
        """One epoch of the ``train`` loader, from ``ctx.step_in_epoch`` on a resume."""
        loader = ctx.data_loaders["train"]
        sampler = loader.sampler
        skip = ctx.step_in_epoch  # resumed mid-epoch: these batches were trained before
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(ctx.epoch, start=skip * (loader.batch_size or 1))
            batches: Iterator[tuple[int, Any]] = enumerate(named_batches(loader, "train"), skip)
        else:
            batches = ((i, b) for i, b in enumerate(named_batches(loader, "train")) if i >= skip)
        self.begin_epoch(ctx)
        self.emit("on_epoch_begin", ctx)
        for index, batch in batches:
            self.emit("on_step_begin", ctx)
            self.step(ctx, to_device(batch, ctx.device, ctx.channels_last))
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
        """After an event: on a signal, let callbacks save (``on_interrupt``), then stop.

        Under ``--nproc`` every rank stops at the same step, the first at which any rank
        has seen a signal, so rank 0 saves the step all of them reached.
        """
        if any_process(interrupt.signum is not None):
            self.emit("on_interrupt", ctx)
            raise Interrupted(interrupt.signum or signal.SIGTERM, ctx.global_step)

    def begin_epoch(self, ctx: LoopContext) -> None:
        """Before ``on_epoch_begin``: puts the model in training mode."""
        ctx.model.train()

    def step(self, ctx: LoopContext, batch: Any) -> None:
        """One batch, already on ``ctx.device``; sets ``ctx.loss`` and ``ctx.batch_size``."""
        inputs, targets = batch
        assert ctx.optimizer is not None
        ctx.optimizer.zero_grad(set_to_none=True)
        data = data_name(ctx.data_loaders.get("train"), "train")
        when = f"epoch {ctx.epoch}, step {ctx.global_step + 1}"
        model = ctx.forward_model or ctx.model
        with autocast(ctx):
            loss = ctx.batch_processor.loss(
                model, inputs, targets, ctx.loss_fn, data, when, ctx.model
            )
        value = loss.item()
        if not math.isfinite(value):
            refuse_non_finite_inputs(inputs, data, when)
            raise RunError(
                f"loss became {value} at epoch {ctx.epoch}, step {ctx.global_step + 1}; "
                "nothing was saved for this step (try a lower learning rate)"
            )
        if ctx.grad_scaler is not None:  # fp16: scaled against underflow, steps skipped on inf
            ctx.grad_scaler.scale(loss).backward()
            ctx.grad_scaler.step(ctx.optimizer)
            ctx.grad_scaler.update()
        else:
            loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is untyped
            ctx.optimizer.step()
        ctx.loss = value
        ctx.batch_size = int(targets.shape[0])

    def after_step(self, ctx: LoopContext) -> None:
        """After ``step`` counted, before ``on_step_end``: a per-step LR schedule steps."""
        if ctx.lr_scheduler is not None and ctx.scheduler_interval == "step":
            ctx.lr_scheduler.step()

    def end_epoch(self, ctx: LoopContext) -> None:
        """After an epoch's last batch, before ``on_epoch_end``: a per-epoch LR schedule
        steps."""
        if ctx.lr_scheduler is not None and ctx.scheduler_interval == "epoch":
            ctx.lr_scheduler.step()

    def end_loop(self, ctx: LoopContext) -> None:
        """Once after the last step (or at once when nothing trains), before
        ``on_loop_end``; not when the loop fails or is stopped."""

    @staticmethod
    def done(ctx: LoopContext) -> bool:
        """Whether the stage has trained its ``num_steps`` or ``num_epochs``."""
        if ctx.num_steps:
            return ctx.global_step >= ctx.num_steps
        return ctx.epoch >= (ctx.num_epochs or 0)

    @staticmethod
    def emit(event: str, ctx: LoopContext) -> None:
        """Call ``event`` (a ``Callback`` method name) on every callback, in order."""
        for callback in ctx.callbacks:
            getattr(callback, event)(ctx)
