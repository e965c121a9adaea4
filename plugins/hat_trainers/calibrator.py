"""Calibrator: forward passes with observers on and no gradient, so QAT starts from good scales."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.engine.context import LoopContext
from hatcli.engine.loop import Trainer, to_device
from hatcli.engine.sampler import EpochSampler
from hatcli.quant import FakeQuantize


class Calibrator(Trainer):
    """Observers see the training data (fake quantization off, BN statistics frozen)."""

    needs_optimizer = False

    def fit(self, ctx: LoopContext) -> None:
        self._emit("on_loop_begin", ctx)
        fake_quants = [m for m in ctx.model.modules() if isinstance(m, FakeQuantize)]
        for fq in fake_quants:
            fq.disable_fake_quant()
            fq.enable_observer()
        ctx.model.train()  # observers update only in training mode...
        for module in ctx.model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                module.eval()  # ...but BN statistics and dropout stay as trained
        loader = ctx.data_loaders["train"]
        with torch.no_grad():
            while not self._done(ctx):
                if isinstance(loader.sampler, EpochSampler):
                    loader.sampler.set_epoch(ctx.epoch)
                self._emit("on_epoch_begin", ctx)
                for index, (inputs, targets) in enumerate(loader):
                    if index < ctx.step_in_epoch:
                        continue
                    self._emit("on_step_begin", ctx)
                    ctx.model(to_device(inputs, ctx.device))
                    ctx.global_step += 1
                    ctx.step_in_epoch = index + 1
                    ctx.batch_size = int(targets.shape[0])
                    self._emit("on_step_end", ctx)
                    if ctx.num_steps and ctx.global_step >= ctx.num_steps:
                        break
                if ctx.step_in_epoch >= len(loader):
                    ctx.epoch += 1
                    ctx.step_in_epoch = 0
                self._emit("on_epoch_end", ctx)
        for fq in fake_quants:
            fq.enable_fake_quant()
        ctx.model.eval()
        self._emit("on_loop_end", ctx)
