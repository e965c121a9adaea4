"""The loop's options on real runs of the example: steps, intervals, schedules, devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hatcli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"


def spec_with(tmp_path: Path, old: str, new: str) -> hatcli.Spec:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    return hatcli.load_spec(path, work_dir=tmp_path / "runs")


def records(tmp_path: Path, event: str) -> list[dict]:
    lines = (tmp_path / "runs" / "float" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_num_steps_with_step_schedule_and_step_intervals(tmp_path: Path) -> None:
    spec = spec_with(
        tmp_path,
        """    num_epochs: 12
    callbacks:
      - {type: Validation, data: val}
      - {type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy, mode: max}""",
        """    num_steps: 25
    log_interval: 5
    callbacks:
      - {type: Validation, every: 10, interval_by: step}
      - {type: Checkpoint, name_prefix: s-, save_interval: 10, interval_by: step}""",
    )
    summary = hatcli.run_stage(spec, "float")
    assert summary["steps"] == 25 and summary["epochs"] == 0  # 45 steps make an epoch
    assert [r["step"] for r in records(tmp_path, "val")] == [10, 20, 25]
    assert [r["step"] for r in records(tmp_path, "train")] == [5, 10, 15, 20, 25]
    lrs = [r["lr"] for r in records(tmp_path, "train")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    last = torch.load(tmp_path / "runs" / "s-checkpoint-last.pth.tar", weights_only=True)
    assert last["global_step"] == 25 and last["step_in_epoch"] == 25


@pytest.mark.slow
def test_epoch_schedule_steps_once_per_epoch(tmp_path: Path) -> None:
    spec = spec_with(
        tmp_path, "{type: CosineAnnealingLR}", "{type: StepLR, step_size: 1, gamma: 0.5}"
    )
    spec.data["stages"]["float"]["num_epochs"] = 3
    hatcli.run_stage(spec, "float")
    lr_by_epoch = {r["epoch"]: r["lr"] for r in records(tmp_path, "train")}
    assert lr_by_epoch == {0: 0.1, 1: 0.05, 2: 0.025}


def test_cuda_without_gpu_is_a_located_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = spec_with(tmp_path, "device: auto", "device: cuda")
    line = EXAMPLE.read_text().splitlines().index("device: auto") + 1
    with pytest.raises(hatcli.InputError, match=rf"spec\.yaml:{line}:9: device: .*CUDA is not"):
        hatcli.run_stage(spec, "float")


def test_load_checkpoint_non_strict_loads_what_fits(tmp_path: Path) -> None:
    source = hatcli.build_model(EXAMPLE, "float")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier")}
    state["unrelated.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "partial.pth.tar")
    spec = spec_with(
        tmp_path,
        "    trainer: Trainer\n",
        "    trainer: Trainer\n    model_convert_pipeline:\n      converters:\n"
        f"        - {{type: LoadCheckpoint, checkpoint_path: '{tmp_path}/partial.pth.tar', "
        "strict: false}\n",
    )
    model = hatcli.build_model(spec, "float")
    assert torch.equal(model.stem.conv.weight, source.stem.conv.weight)
    assert not torch.equal(model.classifier.weight, source.classifier.weight)
