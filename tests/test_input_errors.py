"""More ways a user can get the input wrong; each is one line and exit 2 (in-process CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hatcli.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"
FLOAT_ONLY = EXAMPLE.read_text().split("\n  calibration:")[0] + "\n"


def hat(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("num_epochs: 12", 'num_epochs: "x"', "'x' is not of type 'integer'"),
        ("num_epochs: 12", "num_epochs:", "None is not of type 'integer'"),
        ("data:\n  train:", "data: 5\nunused:\n  train:", "unknown key 'unused'"),
        ("stages:\n  float:", "stages: [1, 2]\nx-old:\n  float:", "is not of type 'object'"),
    ],
    ids=["epochs-string", "epochs-empty", "data-scalar", "stages-list"],
)
def test_wrong_types_never_crash_validation(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(FLOAT_ONLY.replace(old, new, 1))
    result = hat("validate", spec)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and fragment in result.stderr


def test_merge_keys_are_located(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    text = FLOAT_ONLY.replace(
        "    optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}",
        "    optimizer: {<<: *opt, lr: fast}",
    ).replace("seed: 0", "seed: 0\nx-opt: &opt {type: SGD, momentum: 0.9}")
    spec.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "<<: *opt" in t)
    one_line_error(hat("validate", spec), f"{spec}:{line}:", "'fast' is not of type 'number'")
    spec.write_text(text.replace("lr: fast", "lr: 0.1"))
    assert hat("validate", spec).exit_code == 0


def run_float(tmp_path: Path, text: str):
    tmp_path.mkdir(exist_ok=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return hat("train", spec, "--stage", "float", "--work-dir", tmp_path / "w", "-q")


def test_training_data_without_a_batch(tmp_path: Path) -> None:
    text = FLOAT_ONLY.replace("batch_size: 32, shuffle: true", "batch_size: 5000, drop_last: true")
    one_line_error(run_float(tmp_path, text), "data.train", "gives no batch")


def test_misspelt_monitor_metric_fails_before_training(tmp_path: Path) -> None:
    text = FLOAT_ONLY.replace("monitor_metric_key: accuracy", "monitor_metric_key: acuracy")
    one_line_error(run_float(tmp_path, text), "no metric 'acuracy'; did you mean 'accuracy'?")
    assert not (tmp_path / "w" / "float").exists()


def test_trace_input_of_the_wrong_shape_fails_before_training(tmp_path: Path) -> None:
    text = FLOAT_ONLY.replace(
        "      - {type: Validation, data: val}",
        "      - {type: Validation, data: val}\n"
        "      - {type: SaveTraced, input_shape: [1, 3, 8, 8]}",
    )
    one_line_error(run_float(tmp_path, text), "SaveTraced", "[3, 8, 8]", "[1, 8, 8]")


def test_work_dir_that_is_a_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(FLOAT_ONLY)
    (tmp_path / "afile").write_text("x")
    result = hat("train", spec, "--stage", "float", "--work-dir", tmp_path / "afile", "-q")
    one_line_error(result, "is not a folder")


@pytest.mark.parametrize("command", ["train", "resume"])
def test_an_empty_work_dir_option_is_refused_like_an_empty_work_dir_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(tmp_path)  # '' must not become the current folder
    spec = tmp_path / "spec.yaml"
    spec.write_text(FLOAT_ONLY)
    result = hat(command, spec, "--stage", "float", "--work-dir", "", "-q")
    line = one_line_error(result)
    assert line == "error: --work-dir: '' should be non-empty (as work_dir in a spec)"
    assert list(tmp_path.iterdir()) == [spec]
    spec.write_text(FLOAT_ONLY.replace("work_dir: runs/{name}", 'work_dir: ""'))
    assert "work_dir: '' should be non-empty" in hat("validate", spec).stderr


@pytest.mark.slow
def test_optimizer_state_of_another_optimizer(tmp_path: Path) -> None:
    first = run_float(tmp_path, FLOAT_ONLY.replace("num_epochs: 12", "num_epochs: 1"))
    assert first.exit_code == 0, first.output
    text = FLOAT_ONLY.replace(
        "    optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}",
        "    optimizer: {type: Adam, lr: 0.001}\n"
        "    resume_optimizer: true\n"
        "    model_convert_pipeline:\n      converters:\n"
        "        - type: LoadCheckpoint\n"
        f"          checkpoint_path: '{tmp_path}/w/float-checkpoint-last.pth.tar'",
    )
    one_line_error(run_float(tmp_path / "b", text), "optimizer state is SGD's", "Adam")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ({"state_dict": 5}, "'state_dict' is not a mapping of names to tensors"),
        ({"state_dict": {"a": "b"}}, "'state_dict' is not a mapping of names to tensors"),
        ({"state_dict": {}, "meta": "x"}, "'meta' is not a mapping"),
    ],
)
def test_malformed_checkpoint_contents(tmp_path: Path, content: dict, fragment: str) -> None:
    checkpoint = tmp_path / "odd.pth.tar"
    torch.save(content, checkpoint)
    text = FLOAT_ONLY.replace(
        "    trainer: Trainer\n",
        "    trainer: Trainer\n    model_convert_pipeline:\n      converters:\n"
        f"        - {{type: LoadCheckpoint, checkpoint_path: '{checkpoint}'}}\n",
    )
    one_line_error(run_float(tmp_path, text), str(checkpoint), fragment)
