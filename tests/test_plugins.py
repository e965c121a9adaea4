"""Plugins: entry point discovery, conflicts, broken plugins, limiting, commands, a third party."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import hatcli
from hatcli import plugins
from hatcli.cli import app
from hatcli.errors import PluginError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hat_plugin_example"
DIGITS_SPEC = REPO / "examples" / "digits" / "spec.yaml"
BUILT_INS = {
    "models": {"models": ["DigitsNet"]},
    "datasets": {"datasets": ["Digits"]},
    "converters": {"converters": ["LoadCheckpoint"]},
    "callbacks": {"callbacks": ["Validation", "Checkpoint"]},
    "trainers": {"trainers": ["Trainer"]},
    "torch": {"optimizers": ["SGD"]},
}


def pip_install_target(source: Path, target: Path) -> None:
    """``pip install --target`` without the network, build isolation or dependencies."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def install_plugin(root: Path, entry_point: str, module: str, code: str) -> Path:
    """Build and install a one-module plugin distribution; returns the folder for PYTHONPATH."""
    source = root / f"{module}-src"
    (source / module).mkdir(parents=True)
    (source / module / "__init__.py").write_text(textwrap.dedent(code))
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{module.replace("_", "-")}"
            version = "0.0.1"

            [project.entry-points.hat]
            {entry_point} = "{module}"

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    target = root / f"{module}-site"
    pip_install_target(source, target)
    return target


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """An ad-hoc plugin module whose hook functions are ``hooks``."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hatcli.hookimpl(function))
    return module


def registers_model(model_name: str) -> Any:
    def hat_register_models(register: Any) -> None:
        register(model_name, lambda: None, {"type": "object"}, "a test model")

    return hat_register_models


def test_built_ins_are_found_through_entry_points(run_hat) -> None:
    result = run_hat("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name, expected in BUILT_INS.items():
        row = rows[name]
        assert (row["distribution"], row["version"]) == ("hat", hatcli.__version__)
        for kind, component_names in expected.items():
            assert set(component_names) <= set(row["components"][kind]), (name, kind)


def test_two_plugins_giving_one_name_is_an_error_naming_both(plugin) -> None:
    plugin(plugin_module("first", hat_register_models=registers_model("Twin")), "first")
    plugin(plugin_module("second", hat_register_models=registers_model("Twin")), "second")
    with pytest.raises(PluginError, match="'Twin'") as raised:
        plugins.components("models")
    assert "'first'" in str(raised.value) and "'second'" in str(raised.value)


def test_validate_exits_2_when_a_plugin_takes_a_built_in_name(plugin) -> None:
    plugin(plugin_module("impostor", hat_register_models=registers_model("DigitsNet")), "impostor")
    result = CliRunner().invoke(app, ["validate", str(DIGITS_SPEC)])
    assert result.exit_code == 2
    assert "error: model 'DigitsNet' is registered by two plugins: " in result.output
    assert "'models'" in result.output and "'impostor'" in result.output


def test_a_plugin_whose_hook_raises_is_skipped_with_a_warning(plugin) -> None:
    def hat_register_models(register: Any) -> None:
        register("Half", object)  # registered before the failure: must not stay
        raise RuntimeError("no GPU driver")

    def hat_register_datasets(register: Any) -> None:
        register("Fine", lambda: [], {"type": "object"})

    module = plugin_module(
        "flaky",
        hat_register_models=hat_register_models,
        hat_register_datasets=hat_register_datasets,
    )
    plugin(module, "flaky")
    with pytest.warns(plugins.PluginLoadWarning, match="'flaky'.*RuntimeError: no GPU driver"):
        models = plugins.components("models")
    assert "DigitsNet" in models and "Half" not in models
    assert plugins.components("datasets")["Fine"].plugin == "flaky"
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["flaky"].components == {"datasets": ["Fine"]}


def test_a_plugin_that_fails_to_import_is_named_and_skipped(tmp_path: Path, run_hat) -> None:
    site = install_plugin(
        tmp_path,
        "broken",
        "hat_broken_plugin",
        'raise ImportError("needs libfrobnicate")\n',
    )
    result = run_hat("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert "plugin 'broken'" in result.stderr
    assert "ImportError: needs libfrobnicate" in result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert set(BUILT_INS) <= names and "broken" not in names


def test_hat_load_plugins_limits_what_loads(run_hat) -> None:
    result = run_hat("plugins", "--json", env={"HAT_LOAD_PLUGINS": "models,datasets"})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {row["name"] for row in rows} == {"models", "datasets"}


def test_a_plugin_can_add_a_sub_command(tmp_path: Path, run_hat) -> None:
    code = """\
        import typer

        import hatcli


        @hatcli.hookimpl
        def hat_register_commands(app):
            @app.command("greet")
            def greet(name: str = "world") -> None:
                \"\"\"Say hello.\"\"\"
                typer.echo(f"hello {name} from a plugin")
        """
    site = install_plugin(tmp_path, "greeter", "hat_greeter_plugin", code)
    env = {"PYTHONPATH": str(site)}
    result = run_hat("greet", "--name", "hat", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello hat from a plugin"
    assert run_hat("greet", env={**env, "HAT_LOAD_PLUGINS": "models"}).returncode == 2


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, installed as a user would (from a copy: pip writes build files)."""
    root = tmp_path_factory.mktemp("example")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    pip_install_target(source, site)
    assert (site / "hat_plugin_example" / "__init__.py").is_file()
    return site


def test_third_party_example_is_listed(example_site: Path, run_hat) -> None:
    result = run_hat("plugins", env={"PYTHONPATH": str(example_site)})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " example " in line]
    assert len(rows) == 1 and "0.1.0" in rows[0] and "models: TinyMLP" in rows[0], result.stdout


def test_third_party_example_spec_validates(example_site: Path, run_hat, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    result = run_hat("validate", EXAMPLE / "spec.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert "ok (float)" in result.stderr

    text = (EXAMPLE / "spec.yaml").read_text()
    assert text.count("hidden: 32") == 1
    (tmp_path / "spec.yaml").write_text(text.replace("hidden: 32", "hiden: 32"))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "hidden: 32" in row)
    column = text.splitlines()[line - 1].index("hidden") + 1
    result = run_hat("validate", "spec.yaml", env=env)
    assert result.returncode == 2
    assert (
        f"spec.yaml:{line}:{column}: model.hiden: unknown key 'hiden'; did you mean 'hidden'?"
        in result.stderr
    )


def test_third_party_example_trains_one_epoch(example_site: Path, run_hat, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    work = tmp_path / "w"
    result = run_hat(
        "train", EXAMPLE / "spec.yaml", "--stage", "float", "--work-dir", work, env=env
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((work / "float" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["finished"] is True
    assert 0.5 < summary["metrics"]["accuracy"] <= 1.0  # chance is 0.1
    for which in ("last", "best"):
        assert (work / f"float-checkpoint-{which}.pth.tar").stat().st_size > 0
