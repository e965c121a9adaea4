"""The float stage end to end on the bundled example, through the real `hat` command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import hatcli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"


@pytest.fixture(scope="module")
def float_run(
    hat_cli,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work_dir = tmp_path_factory.mktemp("digits")
    result = hat_cli("train", EXAMPLE, "--stage", "float", "--work-dir", work_dir)
    return work_dir, result


@pytest.mark.slow
def test_float_stage_reaches_95_percent_in_under_a_minute(float_run) -> None:
    work_dir, result = float_run
    assert result.returncode == 0, result.stderr
    summary = json.loads((work_dir / "float" / "summary.json").read_text())
    assert summary["stage"] == "float"
    assert summary["metrics"]["accuracy"] >= 0.95
    assert summary["metrics"]["loss"] > 0
    assert summary["wall_time_s"] > 0  # the figure itself goes in the README, not an assert
    assert summary["epochs"] == 12
    assert summary["steps"] == 12 * 45  # 1438 training images, batch 32


@pytest.mark.slow
def test_progress_lines_and_metrics_log(float_run) -> None:
    work_dir, result = float_run
    epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("[float] epoch")]
    assert len(epoch_lines) == 12
    assert "samples/s" in epoch_lines[0] and "accuracy=" in epoch_lines[0]
    records = [json.loads(line) for line in (work_dir / "float" / "metrics.jsonl").open()]
    val = [r for r in records if r["event"] == "val"]
    train = [r for r in records if r["event"] == "train"]
    assert len(val) == 12 and [r["epoch"] for r in val] == list(range(1, 13))
    assert train and all(r["loss"] > 0 and r["lr"] >= 0 for r in train)


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(float_run) -> None:
    work_dir, _ = float_run
    last = torch.load(work_dir / "float-checkpoint-last.pth.tar", weights_only=True)
    best = torch.load(work_dir / "float-checkpoint-best.pth.tar", weights_only=True)
    for key in ("state_dict", "optimizer", "epoch", "global_step", "meta"):
        assert key in last
    assert last["epoch"] == 12 and last["global_step"] == 540
    assert last["meta"]["stage"] == "float" and last["meta"]["spec_name"] == "digits"
    assert last["meta"]["hat_version"] == hatcli.__version__
    assert last["meta"]["torch_version"] == torch.__version__
    assert best["best"]["value"] == max(
        json.loads(line)["accuracy"]
        for line in (work_dir / "float" / "metrics.jsonl").open()
        if '"val"' in line
    )
    model = hatcli.build_model(EXAMPLE, "float")
    model.load_state_dict(best["state_dict"])


@pytest.mark.slow
def test_quiet_prints_nothing(hat_cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(EXAMPLE.read_text().replace("num_epochs: 12", "num_epochs: 1"))
    result = hat_cli("train", spec, "--stage", "float", "--work-dir", tmp_path / "w", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def short_spec(tmp_path: Path, epochs: int = 1) -> hatcli.Spec:
    path = tmp_path / "spec.yaml"
    path.write_text(EXAMPLE.read_text().replace("num_epochs: 12", f"num_epochs: {epochs}"))
    return hatcli.load_spec(path, work_dir=tmp_path / "runs")


@pytest.mark.slow
def test_same_spec_twice_gives_the_same_weights(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = hatcli.run_stage(short_spec(tmp_path / "a"), "float")
    second = hatcli.run_stage(short_spec(tmp_path / "b"), "float")
    assert first["metrics"] == second["metrics"]
    a = torch.load(tmp_path / "a/runs/float-checkpoint-last.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "b/runs/float-checkpoint-last.pth.tar", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_public_api_builds_model_and_data(tmp_path: Path) -> None:
    spec = short_spec(tmp_path)
    model = hatcli.build_model(spec, "float")
    loader = hatcli.build_data_loader(spec, "train")
    inputs, targets = next(iter(loader))
    assert inputs.shape == (32, 1, 8, 8) and targets.dtype == torch.int64
    assert model(inputs).shape == (32, 10)
    assert len(hatcli.build_data_loader(spec, "val").dataset) == 359
    assert len(loader.dataset) == 1797 - 359


@pytest.mark.slow
def test_failed_run_keeps_the_last_good_checkpoint(hat_cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(EXAMPLE.read_text().replace("num_epochs: 12", "num_epochs: 1"))
    assert (
        hat_cli("train", spec, "--stage", "float", "--work-dir", tmp_path / "w", "-q").returncode
        == 0
    )
    last = tmp_path / "w" / "float-checkpoint-last.pth.tar"
    before = last.read_bytes()
    spec.write_text(spec.read_text().replace("lr: 0.1,", "lr: 1.0e+30,"))
    result = hat_cli("train", spec, "--stage", "float", "--work-dir", tmp_path / "w", "-q")
    assert result.returncode == 1
    assert "loss became" in result.stderr and "Traceback" not in result.stderr
    assert last.read_bytes() == before
