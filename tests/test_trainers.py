"""The built-in trainers against their contract: each loop event once, and the
Calibrator leaves the model ready for QAT however its loop ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hat_trainers.calibrator import Calibrator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hatcli.engine.context import LoopContext
from hatcli.quant import FakeQuantize
from hatcli.quant.qconfig import default_activation_fake_quant


class CountingCalibrator(Calibrator):
    def __init__(self) -> None:
        self.ended = 0

    def end_loop(self, ctx: LoopContext) -> None:
        self.ended += 1
        super().end_loop(ctx)


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("a bug in the model")


def calibration_context(tmp_path: Path, model: nn.Module) -> LoopContext:
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    return LoopContext(
        stage="calibration",
        spec_name="test",
        work_dir=tmp_path,
        model=model,
        device=torch.device("cpu"),
        data_loaders={"train": DataLoader(data, batch_size=4)},
        loss_fn=nn.CrossEntropyLoss(),
        num_steps=2,
    )


def test_calibrator_ends_its_loop_once(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 2), default_activation_fake_quant())
    ctx = calibration_context(tmp_path, model)
    trainer = CountingCalibrator()
    trainer.fit(ctx)
    assert trainer.ended == 1
    assert ctx.global_step == 2
    assert all(bool(m.fake_quant_enabled) for m in model if isinstance(m, FakeQuantize))
    assert not model.training


def test_calibrator_turns_fake_quantization_back_on_when_a_step_fails(tmp_path: Path) -> None:
    fake_quant = default_activation_fake_quant()
    model = nn.Sequential(fake_quant, Failing())
    trainer = CountingCalibrator()
    with pytest.raises(ZeroDivisionError):
        trainer.fit(calibration_context(tmp_path, model))
    assert trainer.ended == 1
    assert bool(fake_quant.fake_quant_enabled)
