"""Plugins: entry point discovery, conflicts, broken plugins, limiting, commands, a third party."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from plugin_site import write_plugin_site
from typer.testing import CliRunner

import hatcli
from hatcli import plugins
from hatcli.cli import app
from hatcli.errors import PluginError
from hatcli.spec.schema import assembled_schema

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


def plugin_sites(root: Path, **modules: str) -> dict[str, str]:
    """Each ``module=code`` installed as a plugin (entry point named as the module), in
    its own folder so that they load in the order given; returns the environment."""
    sites = []
    for index, (module, code) in enumerate(modules.items()):
        site = root / f"site{index}"
        write_plugin_site(site, module, textwrap.dedent(code))
        sites.append(str(site))
    return {"PYTHONPATH": os.pathsep.join(sites)}


def help_and_plugins_work(run_hat, env: dict[str, str]) -> list[str]:
    """``hat --help`` and ``hat plugins`` succeed without a traceback; their stderr lines."""
    lines = []
    for args in (["--help"], ["plugins"]):
        result = run_hat(*args, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        lines += result.stderr.splitlines()
    return lines


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_hat_load_plugins_limits_what_loads(run_hat) -> None:
    result = run_hat("plugins", "--json", env={"HAT_LOAD_PLUGINS": "models,datasets"})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {row["name"] for row in rows} == {"models", "datasets"}


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_plugin_whose_command_hook_raises_is_named_and_its_commands_skipped(
    tmp_path: Path, run_hat
) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_raiser="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command()
                def half() -> None:  # added before the failure: must not stay
                    print("half")

                raise RuntimeError("no GPU\\ndriver")
            """,
        hat_test_greeter="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command()
                def greet() -> None:
                    print("hello")
            """,
    )
    warning = (
        "warning: plugin 'hat_test_raiser' failed in hat_register_commands and its commands "
        "were skipped: RuntimeError: no GPU; driver"
    )
    assert help_and_plugins_work(run_hat, env).count(warning) == 2
    result = run_hat("--help", env=env)
    assert "greet" in result.stdout and "half" not in result.stdout
    result = run_hat("greet", env=env)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    assert run_hat("half", env=env).returncode == 2


@pytest.mark.slow
def test_a_plugin_command_named_like_a_built_in_is_refused_and_the_built_in_stays(
    tmp_path: Path, run_hat
) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_impostor="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command()  # named validate implicitly, after the function
                def validate(spec: str) -> None:
                    print("impostor")

                @app.command("schema")
                def my_schema() -> None:
                    print("impostor")

                @app.command()
                def say_hello() -> None:
                    print("hello")
            """,
    )
    lines = help_and_plugins_work(run_hat, env)
    for command in ("validate", "schema"):
        warning = (
            f"warning: plugin 'hat_test_impostor' adds a command {command!r}, the name of a "
            "built-in command; the plugin's command was skipped"
        )
        assert lines.count(warning) == 2, lines
    result = run_hat("validate", DIGITS_SPEC, env=env)
    assert result.returncode == 0, result.stderr
    assert "impostor" not in result.stdout and f"{DIGITS_SPEC}: ok (" in result.stderr
    result = run_hat("schema", env=env)
    assert result.returncode == 0 and "impostor" not in result.stdout
    assert json.loads(result.stdout)["$schema"].startswith("https://json-schema.org/")
    result = run_hat("say-hello", env=env)  # the other command of that plugin stays
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr


@pytest.mark.slow
def test_a_plugin_command_group_named_like_a_command_is_refused(tmp_path: Path, run_hat) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_groups="""\
            import typer

            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                clash = typer.Typer()

                @clash.command()
                def sub() -> None:
                    print("impostor")

                app.add_typer(clash, name="train")
                unnamed = typer.Typer()  # its commands become top-level commands

                @unnamed.command()
                def export() -> None:
                    print("impostor")

                @unnamed.command()
                def extra() -> None:
                    print("impostor")

                app.add_typer(unnamed)
                tools = typer.Typer()

                @tools.command()
                def hello() -> None:
                    print("hello")

                app.add_typer(tools, name="tools")
            """,
    )
    lines = help_and_plugins_work(run_hat, env)
    for command in ("train", "export"):
        warning = (
            f"warning: plugin 'hat_test_groups' adds a command group {command!r}, the name "
            "of a built-in command; the plugin's command group was skipped"
        )
        assert lines.count(warning) == 2, lines
    for command in ("train", "export"):
        result = run_hat(command, "--help", env=env)
        assert result.returncode == 0 and "--stage" in result.stdout, result.stdout
    assert run_hat("extra", env=env).returncode == 2  # the refused group goes whole
    result = run_hat("tools", "hello", env=env)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr


@pytest.mark.slow
def test_a_command_two_plugins_add_is_kept_from_the_first_only(tmp_path: Path, run_hat) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_first="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command()
                def say_hello() -> None:
                    print("first")
            """,
        hat_test_second="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command("say-hello")
                def hello() -> None:
                    print("second")
            """,
    )
    warning = (
        "warning: plugin 'hat_test_second' adds a command 'say-hello', which plugin "
        "'hat_test_first' already added; the one of 'hat_test_second' was skipped "
        "(uninstall one or limit loading with HAT_LOAD_PLUGINS)"
    )
    assert help_and_plugins_work(run_hat, env).count(warning) == 2
    result = run_hat("say-hello", env=env)
    assert (result.returncode, result.stdout) == (0, "first\n"), result.stderr


@pytest.mark.slow
def test_a_plugin_command_typer_cannot_build_is_named_and_skipped(tmp_path: Path, run_hat) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_unbuildable="""\
            from typing import Annotated

            import typer

            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app):
                @app.command()
                def bad(x: Annotated[int, typer.Option()] = typer.Option(1)) -> None:
                    print(x)

                @app.command()
                def good() -> None:
                    print("good")
            """,
    )
    prefix = (
        "warning: plugin 'hat_test_unbuildable' gave a command typer cannot build; "
        "it was skipped: MixedAnnotatedAndDefaultStyleError: "
    )
    lines = help_and_plugins_work(run_hat, env)
    assert len([line for line in lines if line.startswith(prefix)]) == 2, lines
    result = run_hat("good", env=env)
    assert (result.returncode, result.stdout) == (0, "good\n"), result.stderr


@pytest.mark.slow
def test_a_plugin_whose_hooks_do_not_fit_the_hookspecs_is_named_and_skipped(
    tmp_path: Path, run_hat
) -> None:
    env = plugin_sites(
        tmp_path,
        hat_test_misfit="""\
            import hatcli

            @hatcli.hookimpl
            def hat_register_commands(app, extra):
                pass
            """,
    )
    prefix = (
        "warning: plugin 'hat_test_misfit' (hat_test_misfit) could not be registered and "
        "was skipped: PluginValidationError: "
    )
    lines = help_and_plugins_work(run_hat, env)
    assert len([line for line in lines if line.startswith(prefix)]) == 2, lines
    assert "extra" in lines[0]
    result = run_hat("plugins", "--json", env=env)
    names = {row["name"] for row in json.loads(result.stdout)}
    assert set(BUILT_INS) <= names and "hat_test_misfit" not in names


INVALID_SCHEMAS = """\
    import hatcli

    @hatcli.hookimpl
    def hat_register_models(register):
        register("Broken", dict, {"type": "object", "required": 5})
        register("Listy", dict, [{"type": "object"}])
        register("Fine", dict, {"type": "object", "properties": {"width": {"type": "integer"}}})
    """


@pytest.mark.slow
def test_a_component_with_an_invalid_schema_is_named_and_skipped(tmp_path: Path, run_hat) -> None:
    env = plugin_sites(tmp_path, hat_test_schemas=INVALID_SCHEMAS)
    warnings = [
        "warning: plugin 'hat_test_schemas' gave model 'Broken' an invalid schema and it was "
        "skipped: $.required: 5 is not of type 'array'",
        "warning: plugin 'hat_test_schemas' gave model 'Listy' an invalid schema and it was "
        "skipped: a JSON Schema object (dict) is needed, not list",
    ]
    lines = help_and_plugins_work(run_hat, env)
    assert all(lines.count(warning) == 1 for warning in warnings), lines

    result = run_hat("schema", env=env)
    assert result.returncode == 0, result.stderr
    assert all(warning in result.stderr.splitlines() for warning in warnings), result.stderr
    jsonschema.Draft202012Validator.check_schema(json.loads(result.stdout))
    assert '"const": "Fine"' in result.stdout
    assert '"Broken"' not in result.stdout and '"Listy"' not in result.stdout

    spec = tmp_path / "spec.yaml"
    text = DIGITS_SPEC.read_text()
    assert text.count("type: DigitsNet") == 1
    spec.write_text(text.replace("type: DigitsNet", "type: Broken"))
    result = run_hat("validate", spec, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert all(warning in lines for warning in warnings), lines
    assert "unknown model 'Broken'" in lines[-1]

    result = run_hat("plugins", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["hat_test_schemas"]["components"] == {"models": ["Fine"]}


def test_a_component_name_that_is_not_a_string_is_named_and_skipped(plugin) -> None:
    def hat_register_models(register: Any) -> None:
        register(5, dict)
        register("Named", dict)

    plugin(plugin_module("numbered", hat_register_models=hat_register_models), "numbered")
    with pytest.warns(plugins.PluginLoadWarning, match="'numbered' gave a model the name 5"):
        models = plugins.components("models")
    assert 5 not in models and models["Named"].plugin == "numbered"
    assert '"const": "Named"' in json.dumps(assembled_schema())


@pytest.mark.slow
def test_hat_load_plugins_naming_no_installed_plugin_warns_listing_the_installed(
    run_hat,
) -> None:
    result = run_hat("plugins", "--json", env={"HAT_LOAD_PLUGINS": "ghost, models,ghost"})
    assert result.returncode == 0, result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} == {"models"}
    installed = ", ".join(sorted(ep.name for ep in entry_points(group=plugins.ENTRY_POINT_GROUP)))
    assert result.stderr.splitlines() == [
        "warning: HAT_LOAD_PLUGINS names 'ghost', which is not an installed plugin; "
        f"installed: {installed}"
    ]
    # A distribution's name counts, and an empty value means "load none": no warning.
    result = run_hat("plugins", "--json", env={"HAT_LOAD_PLUGINS": "hat"})
    assert result.returncode == 0 and result.stderr == ""
    assert set(BUILT_INS) <= {row["name"] for row in json.loads(result.stdout)}
    result = run_hat("plugins", "--json", env={"HAT_LOAD_PLUGINS": ""})
    assert (result.returncode, result.stderr, json.loads(result.stdout)) == (0, "", [])


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


@pytest.mark.slow
def test_third_party_example_is_listed(example_site: Path, run_hat) -> None:
    result = run_hat("plugins", env={"PYTHONPATH": str(example_site)})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " example " in line]
    assert len(rows) == 1 and "0.1.0" in rows[0] and "models: TinyMLP" in rows[0], result.stdout


@pytest.mark.slow
def test_third_party_example_spec_validates(example_site: Path, run_hat, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    result = run_hat("validate", EXAMPLE / "spec.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert "ok (float, calibration, qat, int_infer)" in result.stderr

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


@pytest.mark.slow
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


def test_every_kind_has_a_singular_name_for_messages() -> None:
    assert set(plugins.SINGULAR) == set(plugins.KINDS)
    assert plugins.singular("losses") == "loss"
    assert plugins.singular("lr_schedulers") == "lr scheduler"
    with pytest.raises(KeyError, match="no loss named 'CrossEntropyLos'"):
        plugins.get_component("losses", "CrossEntropyLos")


def test_a_clash_names_the_kind_in_the_singular(plugin) -> None:
    def hat_register_losses(register: Any) -> None:
        register("MSELoss", dict)

    plugin(plugin_module("clashing_loss", hat_register_losses=hat_register_losses), "clash")
    with pytest.raises(PluginError, match=r"^loss 'MSELoss' is registered by two plugins"):
        plugins.components("losses")


@pytest.mark.slow
def test_a_plugins_dir_loads_each_file_and_skips_a_broken_one(hat_cli, tmp_path: Path) -> None:
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "my_losses.py").write_text(
        textwrap.dedent("""
            import torch
            import hatcli

            @hatcli.hookimpl
            def hat_register_losses(register):
                register("MyL1", torch.nn.L1Loss, {"type": "object"})
        """)
    )
    (folder / "broken.py").write_text("raise RuntimeError('boom')\n")
    listed = hat_cli("--plugins-dir", folder, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["my_losses"]["components"] == {"losses": ["MyL1"]}
    assert rows["my_losses"]["distribution"] == str(folder / "my_losses.py")
    assert "broken" not in rows
    assert f"plugin file {folder / 'broken.py'} failed to load and was skipped" in listed.stderr
    by_env = hat_cli("plugins", "--json", env={"HAT_PLUGINS_DIR": str(folder)})
    assert "my_losses" in by_env.stdout
    missing = hat_cli("--plugins-dir", tmp_path / "nowhere", "plugins")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: --plugins-dir {tmp_path / 'nowhere'}: not a folder"
