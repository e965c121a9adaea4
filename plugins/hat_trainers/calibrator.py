"""Calibrator: forward passes with observers on and no gradient, so QAT starts from good scales."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hatcli.engine.context import LoopContext
from hatcli.engine.data_checks import data_name, input_problem, refuse_non_finite_inputs
from hatcli.engine.loop import Trainer
from hatcli.errors import DataError
from hatcli.quant import FakeQuantize


class Calibrator(Trainer):
    """Observers see the training data (fake quantization off, BN statistics frozen)."""

    needs_optimizer = False
    supports_distributed = True

    # Trainer.setup joins the launcher's group: observers then reduce over ranks.

    def fit(self, ctx: LoopContext) -> None:
        fake_quants = [m for m in ctx.model.modules() if isinstance(m, FakeQuantize)]
        for fq in fake_quants:
            fq.disable_fake_quant()
            fq.enable_observer()
        try:
            super().fit(ctx)  # which calls end_loop once the last batch is done
        except BaseException:
            self.end_loop(ctx)  # failed or stopped: fake quantization goes back on too
            raise

    def end_loop(self, ctx: LoopContext) -> None:
        for fq in ctx.model.modules():
            if isinstance(fq, FakeQuantize):
                fq.enable_fake_quant()
        ctx.model.eval()

    def begin_epoch(self, ctx: LoopContext) -> None:
        ctx.model.train()  # observers update only in training mode...
        for module in ctx.model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                module.eval()  # ...but BN statistics and dropout stay as trained

    @torch.no_grad()
    def step(self, ctx: LoopContext, batch: Any) -> None:
        inputs, targets = batch
        data = data_name(ctx.data_loaders.get("train"), "train")
        when = f"epoch {ctx.epoch}, step {ctx.global_step + 1}"
        # Observers would take NaN into their ranges for good.
        refuse_non_finite_inputs(inputs, data, when)
        try:
            ctx.model(inputs)
        except RuntimeError as exc:
            problem = input_problem(exc, inputs, ctx.model)
            if problem is None:
                raise
            raise DataError(f"{data} {problem} ({when})") from None
        ctx.batch_size = int(targets.shape[0])
