"""docs/plugins.md runs: its Python blocks, in order, make one plugin module that hat
loads; each component builds to its contract, the command prints what the page says,
and the page's spec trains with them."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import hatcli
from hatcli import contracts, plugins
from hatcli.engine.batch_processor import BatchProcessor

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text()
COMPONENTS = {
    "models": ["TinyNet"],
    "datasets": ["Stripes"],
    "converters": ["Freeze"],
    "callbacks": ["Patience"],
    "trainers": ["ClippedTrainer"],
    "metrics": ["ErrorCount"],
    "batch_processors": ["FlipAveraged"],
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
    processor = plugins.get_component("batch_processors", "FlipAveraged").factory()
    assert isinstance(processor, BatchProcessor)
    batch = torch.rand(3, 1, 8, 8)
    loss = processor.loss(
        model, batch, torch.tensor([0, 1, 2]), torch.nn.functional.cross_entropy, "train", "step 1"
    )
    assert loss.ndim == 0 and loss.requires_grad
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


# The other pages: their links resolve, and what they show runs or is what hat prints.

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def fenced(path: Path, language: str) -> list[str]:
    """The code of each fenced block of a page in ``language`` ("" for a block without
    one: shown output), in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in path.read_text().splitlines(keepends=True):
        if current is None and line.startswith("```"):
            current = [] if line.strip() == f"```{language}" else None
            if current is None:  # another language's block: skip to its end
                current = ["<skip>"]
        elif current is not None and line.strip() == "```":
            if current[:1] != ["<skip>"]:
                blocks.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def titled(path: Path, language: str, title: str) -> str:
    """The block whose first line is the comment ``# title`` (a file the page shows)."""
    (code,) = [c for c in fenced(path, language) if c.startswith(f"# {title}\n")]
    return code


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page: each heading's slug, and explicit ``<a id>``."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = set(re.findall(r'<a id="([^"]+)"></a>', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_of_the_page_resolves(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: {target}: no such anchor"


def test_the_readme_shows_the_ci_test_command() -> None:
    """.ci/run runs the README's test command: the two say the same."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()[-1]
    command = ci.removeprefix('cd "$(dirname "$0")/.." && ').strip()
    assert command in fenced(REPO / "README.md", "sh")[1], command


@pytest.mark.parametrize(
    "page", [p for p in PAGES if p.name not in {"migration-from-hat.md"}], ids=lambda p: p.name
)
def test_the_pages_python_has_no_unused_import_or_undefined_name(page: Path) -> None:
    """pyflakes' checks on each page's Python, the page's blocks read as one module
    (docs/plugins.md builds one module from its blocks); HAT's config in the migration
    guide names HAT's own objects, so it is left out."""
    code = "\n".join(fenced(page, "python"))
    if not code:
        return
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "F",
            "--stdin-filename",
            "page.py",
            "-",
        ],
        input=code,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_the_migration_guides_translation_is_the_example_spec() -> None:
    """The guide shows examples/hat_config/spec.yaml whole; tests/test_hat_config.py runs
    that file through every stage and the three resume uses."""
    shown = [c for c in fenced(DOCS / "migration-from-hat.md", "yaml") if "name: hat_config" in c]
    assert shown == [(REPO / "examples" / "hat_config" / "spec.yaml").read_text()]


def test_the_migration_guides_resume_stage_is_valid(tmp_path: Path) -> None:
    """The guide's resume snippet, as the float stage of the translated spec."""
    from ruamel.yaml import YAML

    (snippet,) = [c for c in fenced(DOCS / "migration-from-hat.md", "yaml") if "resume_" in c]
    yaml = YAML(typ="safe")
    data = yaml.load((REPO / "examples" / "hat_config" / "spec.yaml").read_text())
    data["stages"]["float"].update(yaml.load(snippet)["float"])
    path = tmp_path / "spec.yaml"
    with path.open("w") as out:
        yaml.dump(data, out)
    spec = hatcli.load_spec(path)
    assert spec.stage("float").get("resume_optimizer") is True


def test_troubleshootings_hat_spec_gets_the_hints_it_shows(tmp_path: Path, monkeypatch) -> None:
    page = DOCS / "troubleshooting.md"
    (spec_text,) = [c for c in fenced(page, "yaml") if "name: hatform" in c]
    (shown,) = [c for c in fenced(page, "") if c.startswith("$ hat validate hatform.yaml")]
    (tmp_path / "hatform.yaml").write_text(spec_text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hatcli.SpecError) as caught:
        hatcli.load_spec(Path("hatform.yaml"))
    assert str(caught.value).splitlines() == shown.splitlines()[1:]


def test_the_eager_example_of_quantization_md_converts(tmp_path: Path) -> None:
    """docs/quantization.md's hand-made quantizable model goes to QAT and to integers."""
    from hatcli.quant import convert, prepare_qat

    (code,) = fenced(DOCS / "quantization.md", "python")
    namespace: dict[str, object] = {}
    exec(compile(code, "quantization.md", "exec"), namespace)
    model = namespace["Net"]()  # type: ignore[operator]
    model.fuse_model()
    model.set_qconfig()
    qat = prepare_qat(model, "fuse_bn")
    x = torch.rand(4, 1, 8, 8)
    qat.train()
    qat(x)  # the observers see a batch
    integer = convert(qat)
    assert integer(x).shape == (4, 10)


TUTORIAL = DOCS / "tutorial.md"


def tutorial_project(folder: Path) -> Path:
    """The tutorial's files written into ``folder`` as a reader makes them, and its
    images drawn by its own script; ``folder``."""
    for title in ("make_shapes.py", "plugins/shapes.py", "predict.py"):
        (folder / title).parent.mkdir(parents=True, exist_ok=True)
        (folder / title).write_text(titled(TUTORIAL, "python", title))
    (folder / "spec.yaml").write_text(titled(TUTORIAL, "yaml", "spec.yaml"))
    result = subprocess.run(
        [sys.executable, "make_shapes.py"], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    (shown,) = [c for c in fenced(TUTORIAL, "") if c.startswith("wrote ")]
    assert result.stdout == shown
    return folder


def test_the_tutorials_files_make_a_valid_project(plugin, tmp_path: Path, monkeypatch) -> None:
    """Its images, its plugin (a plain model: graph mode takes it) and its spec."""
    project = tutorial_project(tmp_path)
    source = project / "plugins" / "shapes.py"
    loaded = importlib.util.spec_from_file_location("shapes", source)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    plugin(module, "shapes")
    assert not any(hasattr(module.ShapeNet, m) for m in ("fuse_model", "set_qconfig"))
    monkeypatch.chdir(project)
    spec = hatcli.load_spec(Path("spec.yaml"))
    assert spec.stage_names == ["float", "calibration", "qat", "int_infer"]
    inputs, targets = next(iter(hatcli.build_data_loader(spec, "val")))
    assert inputs.shape == (150, 3, 32, 32) and set(targets.tolist()) == {0, 1, 2}
    assert hatcli.build_model(spec, "float")(inputs).shape == (150, 3)
    # The mistake the page shows is reported as the page says.
    claim = re.search(r"`num_clases: 3` in the\nmodel would give\n`([^`]*)`", TUTORIAL.read_text())
    assert claim is not None
    Path("spec.yaml").write_text(
        Path("spec.yaml").read_text().replace("num_classes: 3", "num_clases: 3")
    )
    with pytest.raises(hatcli.SpecError) as caught:
        hatcli.load_spec(Path("spec.yaml"))
    assert str(caught.value) == claim.group(1)


@pytest.mark.slow
def test_the_tutorial_runs_from_images_to_onnx(hat_cli, tmp_path: Path) -> None:
    """The page's commands, as a reader runs them, with the plugin from --plugins-dir (the
    four stages in one command, to spare three starts)."""
    project = tutorial_project(tmp_path)
    local = ("--plugins-dir", "plugins")
    result = hat_cli(*local, "train", "spec.yaml", "--stage", "all", cwd=project)
    assert result.returncode == 0, result.stderr
    qat = json.loads((project / "runs/shapes/qat/summary.json").read_text())
    integer = json.loads((project / "runs/shapes/int_infer/summary.json").read_text())
    assert integer["metrics"] == qat["metrics"] and integer["metrics"]["accuracy"] > 0.9
    export = ("export", "spec.yaml", "--stage", "int_infer", "--format")
    result = hat_cli(*local, *export, "onnx-integer", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "identical, max difference 0 output scales" in result.stdout + result.stderr
    result = hat_cli(*local, *export, "onnx", cwd=project)
    assert result.returncode == 0, result.stderr
    (command,) = [c for c in fenced(TUTORIAL, "sh") if c.startswith("python predict.py")]
    result = subprocess.run(
        [sys.executable, *command.split()[1:]], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "triangle"
