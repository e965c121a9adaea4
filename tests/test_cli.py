"""`hat validate`, `hat schema`, `hat train` input errors: one line, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import torch
from hat_models.digits_net import DigitsNet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"


def assert_input_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_validate_ok(hat_cli) -> None:
    result = hat_cli("validate", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stderr


@pytest.mark.slow
def test_validate_reports_every_problem_sorted(hat_cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    text = EXAMPLE.read_text().replace("num_epochs: 12", "num_epochs: -3")
    text = text.replace("type: DigitsNet", "type: DigitsNett").replace("lr: 0.1", "lr: high")
    spec.write_text(text)
    result = hat_cli("validate", spec)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)
    assert "did you mean 'DigitsNet'" in lines[0]
    assert lines[2].startswith(f"{spec}:")


@pytest.mark.slow
def test_validate_missing_file(hat_cli) -> None:
    assert_input_error(
        hat_cli("validate", "no/such/spec.yaml"), "no/such/spec.yaml:1:1:", "not found"
    )


@pytest.mark.slow
def test_help_and_module_entry(hat_cli) -> None:
    result = hat_cli("--help")
    assert result.returncode == 0
    for command in ("validate", "train", "plugins", "schema"):
        assert command in result.stdout
    # Each command's summary is whole (not cut off with "..."), flags take no value.
    assert "..." not in result.stdout.split("Commands:")[1]
    train = hat_cli("train", "--help")
    assert train.stdout.startswith("Usage: hat train [OPTIONS] SPEC\n")
    assert "<bool>" not in train.stdout and "{" not in train.stdout.splitlines()[0]
    assert "-q, --quiet  " in train.stdout and "--nproc N" in train.stdout
    version = hat_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"hat \d+\.\d+\.\d+\S*\n", version.stdout)


@pytest.mark.slow
def test_schema_is_a_valid_schema_listing_components(hat_cli) -> None:
    result = hat_cli("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    text = result.stdout
    for name in ("DigitsNet", "Digits", "LoadCheckpoint", "Validation", "SGD", "CosineAnnealingLR"):
        assert f'"const": "{name}"' in text
    assert '"const": "TopKAccuracy"' in text  # a kind inside a component (Validation)
    from hatcli.spec.loader import load_yaml

    data, _ = load_yaml(EXAMPLE)
    jsonschema.validate(data, schema)  # an editor using it accepts the example...
    data["stages"]["float"]["optimizer"]["momentm"] = 0.9
    with pytest.raises(jsonschema.ValidationError):  # ...and flags a misspelt key
        jsonschema.validate(data, schema)


def test_published_schema_file_is_valid_draft_2020_12() -> None:
    schema = json.loads((ROOT / "schemas" / "hat.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.slow
def test_unknown_stage(hat_cli, tmp_path: Path) -> None:
    assert_input_error(hat_cli("train", EXAMPLE, "--stage", "qta"), "no stage 'qta'", "float")


def qat_spec(tmp_path: Path, checkpoint: Path, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        EXAMPLE.read_text().replace("num_epochs: 12", "num_epochs: 1")
        + "  finetune:\n"
        + "    model_convert_pipeline:\n"
        + f"      converters: [{{type: LoadCheckpoint, checkpoint_path: '{checkpoint}'{extra}}}]\n"
        + "    num_epochs: 0\n"
        + "    callbacks: [{type: Validation}]\n"
    )
    return spec


@pytest.mark.slow
def test_load_checkpoint_weights_into_a_stage(hat_cli, tmp_path: Path) -> None:
    model = DigitsNet()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "good.pth.tar")
    spec = qat_spec(tmp_path, tmp_path / "good.pth.tar")
    result = hat_cli("train", spec, "--stage", "finetune", "--work-dir", tmp_path / "w", "-q")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "w" / "finetune" / "summary.json").read_text())
    assert summary["steps"] == 0 and 0 <= summary["metrics"]["accuracy"] <= 1


def _truncated(path: Path) -> None:
    buffer = path.parent / "full.pth.tar"
    torch.save({"state_dict": DigitsNet().state_dict()}, buffer)
    path.write_bytes(buffer.read_bytes()[:5000])


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: None, "checkpoint not found"),
        (lambda p: p.write_bytes(b""), "checkpoint is empty"),
        (lambda p: p.write_bytes(random.Random(0).randbytes(4096)), "not a readable checkpoint"),
        (_truncated, "corrupt or truncated"),
        (lambda p: torch.save({"weights": 1}, p), "not a hat checkpoint"),
        (
            lambda p: torch.save({"state_dict": DigitsNet(width=8).state_dict()}, p),
            "shape mismatch",
        ),
        (
            lambda p: torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, p),
            "does not fit the model",
        ),
    ],
    ids=["missing", "empty", "random", "truncated", "not-hat", "other-arch", "other-keys"],
)
@pytest.mark.slow
def test_bad_checkpoints_are_one_line_errors(hat_cli, tmp_path: Path, make, fragment: str) -> None:
    checkpoint = tmp_path / "ckpt.pth.tar"
    make(checkpoint)
    spec = qat_spec(tmp_path, checkpoint)
    result = hat_cli("train", spec, "--stage", "finetune", "--work-dir", tmp_path / "w", "-q")
    assert_input_error(result, str(checkpoint), fragment)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_checkpoint_with_code_is_refused_and_code_does_not_run(hat_cli, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": _RunsCode(str(marker))}, checkpoint, pickle_module=pickle)
    spec = qat_spec(tmp_path, checkpoint)
    result = hat_cli("train", spec, "--stage", "finetune", "--work-dir", tmp_path / "w", "-q")
    assert_input_error(result, str(checkpoint), "refused")
    assert not (tmp_path / "w").exists()
    assert not marker.exists()


@pytest.mark.slow
def test_validation_without_its_data_split_is_located(hat_cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    text = EXAMPLE.read_text().replace(
        "{type: Validation, data: val}", "{type: Validation, data: test}"
    )
    spec.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "data: test" in t)
    result = hat_cli("train", spec, "--stage", "float", "--work-dir", tmp_path / "w")
    assert_input_error(result, f"{spec}:{line}:", "no data loader 'test'")
