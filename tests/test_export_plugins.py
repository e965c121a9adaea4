"""Export formats are plugin components: an installed exporter is listed, chosen by
``--format`` and given the stage's model; an unknown format lists the installed ones."""

from __future__ import annotations

import io
import re
import textwrap
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import hatcli
from hatcli import plugins
from hatcli.cli import app
from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.export import Batch, Exporter, ExportResult
from hatcli.export.result import accuracy, agreement
from hatcli.export.stage import export_stage, formats
from hatcli.spec.spec import load_spec

BUILT_IN_FORMATS = ["onnx", "onnx-integer", "torchscript"]


class StateDictExporter(Exporter):
    """A test format: the model's state dict, checked by loading it into the model."""

    suffix = ".weights"
    calls: ClassVar[list[tuple[nn.Module, torch.Tensor, int]]] = []

    def export(
        self,
        model: nn.Module,
        example: torch.Tensor,
        batches: list[Batch],
        result: ExportResult,
        path: Path,
    ) -> None:
        self.calls.append((model, example, len(batches)))
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        model.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
        ref = torch.cat([model(x) for x, _ in batches])
        targets = torch.cat([y for _, y in batches])
        result.label, result.runner = "a state dict", "torch.load"
        result.samples, result.accuracy = len(targets), accuracy(ref, targets)
        result.agreements.append(agreement("hat float model", ref, ref, targets, None, True))
        atomic_write_bytes(path, buffer.getvalue())


def _exporters_plugin() -> types.ModuleType:
    module = types.ModuleType("hat_test_exporters")

    @hatcli.hookimpl
    def hat_register_exporters(register: Any) -> None:
        register("state-dict", StateDictExporter, help="the model's state dict")

    module.hat_register_exporters = hat_register_exporters  # type: ignore[attr-defined]
    return module


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    """A one-stage spec without checkpoints: its model is exported as built."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: tiny
            work_dir: {tmp_path / "runs"}
            seed: 0
            model: {{type: DigitsNet, num_classes: 10, width: 4}}
            data:
              val: {{type: Digits, split: val, batch_size: 128}}
            stages:
              float: {{trainer: Trainer, num_epochs: 0}}
            """
        )
    )
    return path


def test_the_built_in_formats_come_from_the_exporters_plugin() -> None:
    installed = plugins.components("exporters")
    assert sorted(installed) == BUILT_IN_FORMATS
    assert {c.plugin for c in installed.values()} == {"exporters"}


def test_a_plugin_exporter_is_listed_and_used_by_export_stage(plugin, spec_path: Path) -> None:
    plugin(_exporters_plugin(), "hat_test_exporters")
    assert formats() == sorted([*BUILT_IN_FORMATS, "state-dict"])
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["hat_test_exporters"].components == {"exporters": ["state-dict"]}

    StateDictExporter.calls.clear()
    spec = load_spec(spec_path)
    result = export_stage(spec, "float", "state-dict")
    assert result.path == spec.work_dir / "float.weights" and result.path.is_file()
    [(model, example, n_batches)] = StateDictExporter.calls
    assert not model.training and example.shape == (2, 1, 8, 8) and n_batches == 3
    acc = f"{result.accuracy:.4f}"
    assert result.lines() == [
        f"[float] exported the float model as a state dict: {result.path}",
        f"[float] accuracy of the exported model (torch.load, 359 val samples): {acc}",
        f"[float] agreement with the hat float model (its accuracy {acc}): 100.000% of 3590 "
        "output elements identical, max abs difference 0",
    ]


def test_hat_export_uses_a_plugin_exporter(plugin, spec_path: Path, tmp_path: Path) -> None:
    plugin(_exporters_plugin(), "hat_test_exporters")
    out = tmp_path / "elsewhere.pt"
    result = CliRunner().invoke(
        app, ["export", str(spec_path), "-s", "float", "-f", "state-dict", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"[float] exported the float model as a state dict: {out}" in result.output
    assert set(torch.load(out)) == set(StateDictExporter.calls[-1][0].state_dict())


def test_an_unknown_format_lists_the_installed_ones(plugin, spec_path: Path) -> None:
    plugin(_exporters_plugin(), "hat_test_exporters")
    result = CliRunner().invoke(app, ["export", str(spec_path), "-s", "float", "-f", "tflite"])
    assert result.exit_code == 2
    assert result.output == (
        "error: --format: 'tflite' is not one of: onnx, onnx-integer, state-dict, torchscript\n"
    )
    assert not (spec_path.parent / "runs").exists()


def test_export_help_says_formats_come_from_plugins() -> None:
    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "formats come from plugins" in re.sub(r"[\s│]+", " ", result.output)


def test_a_factory_that_gives_no_exporter_is_named(plugin, spec_path: Path) -> None:
    module = types.ModuleType("hat_test_not_an_exporter")

    @hatcli.hookimpl
    def hat_register_exporters(register: Any) -> None:
        register("odd", lambda: object())

    module.hat_register_exporters = hat_register_exporters  # type: ignore[attr-defined]
    plugin(module, "odd_plugin")
    result = CliRunner().invoke(app, ["export", str(spec_path), "-s", "float", "-f", "odd"])
    assert result.exit_code == 2
    assert result.output == (
        "error: exporter 'odd' of plugin 'odd_plugin' gives a object, not a "
        "hatcli.export.Exporter\n"
    )
