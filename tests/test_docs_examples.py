"""docs/plugins.md runs: its Python blocks, in order, make one plugin module that hat
loads; each component builds to its contract, the command prints what the page says,
and the page's spec trains with them."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
import types
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import hatcli
from hatcli import contracts, plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text()
COMPONENTS = {
    "models": ["TinyNet"],
    "datasets": ["Stripes"],
    "converters": ["Freeze"],
    "callbacks": ["Patience"],
    "trainers": ["ClippedTrainer"],
    "metrics": ["ErrorCount"],
}


def blocks(language: str) -> list[tuple[int, str]]:
    """``(line of the block's first code line, code)`` of each fenced block."""
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", TEXT, re.MULTILINE | re.DOTALL):
        found.append((TEXT.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return found


def docs_module() -> types.ModuleType:
    """The page's Python blocks run in order in one module, as a plugin package would."""
    module = types.ModuleType("hat_docs_example")
    for line, code in blocks("python"):
        # Padding keeps a traceback's line numbers those of the page.
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_page_has_an_example_of_every_kind() -> None:
    assert len(blocks("python")) >= 8
    module = docs_module()
    hooks = {name for name in vars(module) if name.startswith("hat_register_")}
    assert hooks == {f"hat_register_{kind}" for kind in COMPONENTS} | {"hat_register_commands"}


def test_the_pages_own_tests_pass() -> None:
    module = docs_module()
    tests = [value for name, value in vars(module).items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()


def test_each_component_builds_to_its_contract(plugin) -> None:
    plugin(docs_module(), "docs_example")
    info = {i.name: i for i in plugins.plugin_infos()}["docs_example"]
    assert info.components == COMPONENTS
    model = plugins.get_component("models", "TinyNet").factory()
    assert isinstance(model, contracts.Quantizable)
    inputs, target = plugins.get_component("datasets", "Stripes").factory(size=4)[0]
    assert model(inputs.unsqueeze(0)).shape == (1, 8) and 0 <= target < 8
    callback = plugins.get_component("callbacks", "Patience").factory()
    assert isinstance(callback, contracts.Callback)
    assert isinstance(
        plugins.get_component("trainers", "ClippedTrainer").factory(), contracts.Trainer
    )
    metric = plugins.get_component("metrics", "ErrorCount").factory()
    assert isinstance(metric, contracts.Metric)
    assert metric.names() == list(metric.compute())
    freeze = plugins.get_component("converters", "Freeze").factory(modules=["conv"])
    context = contracts.ConvertContext("float", "fuse_bn", None)  # type: ignore[arg-type]
    assert freeze(model, context) is model
    assert not any(p.requires_grad for p in model.conv.parameters())
    with pytest.raises(hatcli.InputError, match="no sub-module 'head'"):
        plugins.get_component("converters", "Freeze").factory(modules=["head"])(model, context)


def test_the_command_prints_what_the_page_says(plugin) -> None:
    plugin(docs_module(), "docs_example")
    claim = re.search(r"`hat (tinynet-size [^`]*)` then prints `([^`]*)`", TEXT)
    assert claim is not None
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Stands in for hat's app."""

    plugins.register_commands(app)
    result = CliRunner().invoke(app, claim.group(1).split())
    assert result.exit_code == 0, result.output
    assert result.output.strip() == claim.group(2)


def test_the_pages_spec_trains_with_the_plugin(plugin, tmp_path: Path) -> None:
    plugin(docs_module(), "docs_example")
    ((_, spec_text),) = blocks("yaml")
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text)
    spec = hatcli.load_spec(path, work_dir=tmp_path / "runs")
    floats = hatcli.run_stage(spec, "float")
    qat = hatcli.run_stage(spec, "qat")
    assert floats["epochs"] == 3 and qat["epochs"] == 1
    assert set(floats["metrics"]) >= {"accuracy", "loss", "errors"}
    assert qat["metrics"]["errors"] == round(128 * (1 - qat["metrics"]["accuracy"]))
    lines = (tmp_path / "runs" / "float" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["event"] == "patience" for line in lines) == 3
    saved = torch.load(tmp_path / "runs" / "float-checkpoint-last.pth.tar", weights_only=True)
    assert saved["callbacks"]["Patience"]["seen_step"] == floats["steps"]


def test_the_packaging_example_names_the_hat_entry_point_group() -> None:
    ((_, toml_text),) = blocks("toml")
    project = tomllib.loads(toml_text)["project"]
    assert project["entry-points"]["hat"] == {"tiny": "hat_tiny"}


EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "hat_plugin_example"


@pytest.mark.slow
def test_the_example_plugin_runs_all_four_stages(plugin, tmp_path: Path) -> None:
    """TinyMLP has no quantization code: graph mode takes it through every stage, and
    the integer model's accuracy is the one QAT validation reported."""
    source = EXAMPLE_PLUGIN / "hat_plugin_example" / "__init__.py"
    spec_of_module = importlib.util.spec_from_file_location("hat_plugin_example", source)
    assert spec_of_module is not None and spec_of_module.loader is not None
    module = importlib.util.module_from_spec(spec_of_module)
    spec_of_module.loader.exec_module(module)
    plugin(module, "example")
    spec = hatcli.load_spec(EXAMPLE_PLUGIN / "spec.yaml", work_dir=tmp_path)
    assert spec.stage_names == ["float", "calibration", "qat", "int_infer"]
    summaries = {stage: hatcli.run_stage(spec, stage) for stage in spec.stage_names}
    assert summaries["float"]["metrics"]["accuracy"] > 0.5  # chance is 0.1
    assert summaries["int_infer"]["metrics"] == summaries["qat"]["metrics"]
    assert (tmp_path / "int_infer-traced.pt").is_file()
