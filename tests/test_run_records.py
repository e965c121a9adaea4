"""Looking at a run: the TensorBoard callback's event files, read back with tensorboard's
own reader, and curves.png after each stage and from ``hat plot``."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hatcli
from hatcli.curves import draw_spec, read_stage
from hatcli.errors import InputError

SPEC = """\
version: 1
name: records
model: {type: DigitsNet, width: 4}
data:
  train: {type: Digits, split: train, batch_size: 64, shuffle: true}
  val: {type: Digits, split: val, batch_size: 512}
stages:
  float:
    optimizer: {type: SGD, lr: 0.1}
    num_steps: 6
    log_interval: 2
    device: cpu
    callbacks:
      - {type: Validation, every: 3, interval_by: step}
      - {type: TensorBoard}
  int_eval:
    num_epochs: 0
    device: cpu
    callbacks: [{type: Validation}]
"""


def train(tmp_path: Path, *stages: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    loaded = hatcli.load_spec(spec, work_dir=tmp_path / "work")
    for stage in stages:
        hatcli.run_stage(loaded, stage)
    return tmp_path / "work"


@pytest.mark.slow
def test_tensorboard_writes_loss_lr_throughput_and_every_metric(tmp_path: Path) -> None:
    work = train(tmp_path, "float")
    events = EventAccumulator(str(work / "tensorboard" / "float"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s"} <= tags
    assert {"val/accuracy", "val/loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("val/accuracy")] == [3, 6]
    assert all(e.value == pytest.approx(0.1) for e in events.Scalars("train/lr"))


def test_tensorboard_missing_is_one_clear_message(monkeypatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(InputError, match=r"pip install 'hat\[tensorboard\]'"):
        train(tmp_path, "float")


@pytest.mark.slow
def test_each_stage_leaves_curves_png_with_every_stage(tmp_path: Path) -> None:
    work = train(tmp_path, "float", "int_eval")
    png = work / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    curves = read_stage(work, "float")
    assert curves is not None and [s for s, _ in curves.train] == [2, 4, 6]
    assert [s for s, _ in curves.val["accuracy"]] == [3, 6]


@pytest.mark.slow
def test_hat_plot_draws_to_the_asked_file(run_hat, tmp_path: Path) -> None:
    work = train(tmp_path, "float")
    (work / "curves.png").unlink()
    result = run_hat("plot", tmp_path / "spec.yaml", "--work-dir", work, "-o", tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_plot_before_any_stage_ran_says_so(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    with pytest.raises(InputError, match=r"no stage has a metrics\.jsonl"):
        draw_spec(hatcli.load_spec(spec, work_dir=tmp_path / "nothing"))
