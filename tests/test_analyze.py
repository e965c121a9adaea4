"""`hat analyze`: the metric functions, the suggestion fragments, the report files of a
small traced model (with a function kept float), input errors, and (slow) the proof:
an outlier planted in the example's trained DigitsNet is found, ranked first, and the
suggested rule brings the accuracy back."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import hatcli
from hatcli import plugins
from hatcli.analyze import analyze_stage, write_outputs
from hatcli.analyze import fragment as fragments
from hatcli.analyze.layers import find_layers
from hatcli.analyze.measure import OUTPUT
from hatcli.analyze.metrics import (
    ErrorStats,
    clipped_count,
    cosine,
    error_in_scales,
    spread,
    sqnr_db,
    zeroed_fraction,
)
from hatcli.cli import app
from hatcli.export.stage import load_stage_checkpoint
from hatcli.quant import FakeQuantize, convert
from hatcli.quant.qconfig_spec import QConfigSpec, QConfigSpecError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"

# --- the metric functions -------------------------------------------------------------


def test_cosine_and_sqnr_of_hand_made_tensors() -> None:
    r = torch.tensor([3.0, 4.0])
    assert cosine(r, r) == pytest.approx(1.0)
    assert cosine(r, -r) == pytest.approx(-1.0)
    assert cosine(r, torch.tensor([4.0, -3.0])) == pytest.approx(0.0)
    # signal 25, noise 0.25: 20 dB
    assert sqnr_db(r, torch.tensor([3.5, 4.0])) == pytest.approx(20.0)
    assert sqnr_db(r, r) == math.inf
    assert sqnr_db(torch.zeros(2), r) == -math.inf
    assert cosine(torch.zeros(3), torch.zeros(3)) == 1.0


def test_running_sums_do_not_depend_on_the_batching() -> None:
    torch.manual_seed(0)
    reference = torch.randn(6, 4, 5, 5)
    approx = reference + 0.01 * torch.randn_like(reference)
    whole, chunks = ErrorStats(), ErrorStats()
    whole.update(reference, approx)
    for i in range(0, 6, 2):
        chunks.update(reference[i : i + 2], approx[i : i + 2])
    assert chunks.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-12)
    assert chunks.cosine == pytest.approx(whole.cosine, rel=1e-12)
    assert chunks.max_abs == whole.max_abs
    assert chunks.worst_channel_sqnr_db == pytest.approx(whole.worst_channel_sqnr_db, rel=1e-12)
    r64, e64 = reference.double(), reference.double() - approx.double()
    expected = 10 * math.log10(float((r64**2).sum()) / float((e64**2).sum()))
    assert whole.sqnr_db == pytest.approx(expected, rel=1e-12)


def test_worst_channel_sees_what_the_tensor_figure_hides() -> None:
    reference = torch.ones(1, 2, 4, 4)
    reference[:, 0] *= 100.0  # a loud channel
    approx = reference.clone()
    approx[:, 1] = 0.0  # the quiet channel lost
    stats = ErrorStats()
    stats.update(reference, approx)
    assert stats.sqnr_db == pytest.approx(10 * math.log10(100.0**2 + 1.0))
    assert stats.worst_channel_sqnr_db == pytest.approx(0.0)


def test_errors_in_output_scales_per_tensor_and_per_channel() -> None:
    reference = torch.zeros(1, 2, 1, 1)
    approx = torch.tensor([[[[0.5]], [[3.0]]]])
    assert float(error_in_scales(reference, approx, torch.tensor(0.5)).max()) == 6.0
    per_channel = error_in_scales(reference, approx, torch.tensor([0.5, 1.5]), axis=1)
    assert per_channel.flatten().tolist() == [1.0, 2.0]
    stats = ErrorStats()
    stats.update(reference, approx, torch.tensor([0.5, 1.5]), axis=1)
    assert stats.max_scaled == 2.0


def test_clipped_values_spread_and_zeroed_weights() -> None:
    s = torch.tensor(1.0)
    assert clipped_count(torch.tensor([-128.4, -128.6, 127.4, 127.6, 0.0]), s) == 2
    assert spread(torch.tensor([1.0, 1.0, 1.0, 10.0])) == pytest.approx(10.0)
    assert spread(torch.tensor([0.0, 0.0, 2.0])) == math.inf
    weight = torch.tensor([[1.0, 0.001, 0.0], [1.0, 0.5, 0.3]])
    scale = weight.abs().amax(dim=1) / 127.5
    # row 0: 0.001 rounds to 0 (the exact 0 is not counted); row 1: nothing rounds to 0
    assert zeroed_fraction(weight, scale, axis=0) == pytest.approx(1 / 5)


# --- suggestion fragments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        {"block_conv1": "float", "block_conv2": "float"},
        {"layer1.0.add": {"activation_observer": "percentile", "percentile": 99.9}},
        {"head.fc": {"activation_observer": "mse"}},
        {"x_quant": {"fixed_scale": 0.0078125}, "classifier": "int8_out"},
        {"1.0": "float"},  # a key YAML would read as a number is quoted
    ],
)
def test_fragments_parse_as_the_spec_parser_reads_them(rules: dict[str, Any]) -> None:
    text = fragments.render(rules)
    assert text.startswith("modules:\n")
    parsed = fragments.check(text)
    assert set(parsed.modules) == set(rules)
    assert fragments.load(text)["modules"] == rules


def test_a_wrong_fragment_is_refused_by_the_parser() -> None:
    with pytest.raises(QConfigSpecError):
        fragments.check(fragments.render({"a": {"activation_observer": "median"}}))
    assert isinstance(QConfigSpec.parse(fragments.load("modules: {a: float}\n")), QConfigSpec)


# --- a small traced model with a function kept float (fast) ----------------------------

PLUGIN = """
import torch
import hatcli

class Islands(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = torch.softmax(x, dim=1) * 4.0
        return self.head(x.mean((2, 3)))

@hatcli.hookimpl
def hat_register_models(register):
    register("Islands", Islands, {"type": "object", "additionalProperties": False})
"""

SMALL_SPEC = """\
version: 1
name: small
work_dir: WORK
seed: 0
device: cpu
model: {type: Islands}
data:
  train: {type: Digits, split: train, batch_size: 64, shuffle: true}
  val: {type: Digits, split: val, batch_size: 128}
stages:
  float:
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}
    num_epochs: 2
    callbacks:
      - {type: Checkpoint, name_prefix: float-}
  calibration:
    trainer: Calibrator
    model_convert_pipeline:
      converters:
        - {type: LoadCheckpoint, checkpoint_path: "{work_dir}/float-checkpoint-last.pth.tar"}
        - {type: Float2QAT}
    num_steps: 3
    callbacks:
      - {type: Validation}
      - {type: Checkpoint, name_prefix: calibration-}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hatcli.Spec]:
    """The Islands model trained briefly and calibrated; its plugin registered."""
    module = types.ModuleType("analyze_islands")
    exec(PLUGIN, module.__dict__)
    plugins.load_plugins()
    plugins.register_plugin(module, "analyze_islands")
    folder = tmp_path_factory.mktemp("small")
    path = folder / "spec.yaml"
    path.write_text(SMALL_SPEC.replace("WORK", str(folder / "runs")))
    spec = hatcli.load_spec(path)
    hatcli.run_stage(spec, "float")
    hatcli.run_stage(spec, "calibration")
    yield spec
    plugins.unregister_plugin("analyze_islands")


def _rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "layers.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


class _Page(HTMLParser):
    """The table cells' text, the images' sources, and whether the tags nest properly."""

    VOID = frozenset({"meta", "img", "br", "link", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.cells: list[str] = []
        self.images: list[str] = []
        self.in_cell = False
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "td":
            self.in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.balanced = False
        if tag == "td":
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.cells[-1] += data


def parse_report(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    assert page.balanced and not page.open
    return page


def _model_and_data(
    spec: hatcli.Spec, stage: str, batches: int | None = None
) -> tuple[torch.nn.Module, list[Any]]:
    model = hatcli.build_model(spec, stage)
    load_stage_checkpoint(spec, spec.stage(stage), model)
    data = [(x.float(), y) for x, y in hatcli.build_data_loader(spec, "val", stage)]
    return model.eval(), data[:batches]


def independent_output_figures(
    spec: hatcli.Spec, stage: str, batches: int | None = None
) -> tuple[float, float]:
    """Cosine and SQNR of the integer model's outputs against the float model's (the
    stage's QAT model with fake quantization off) on the first ``batches`` of val,
    computed here from scratch."""
    model, data = _model_and_data(spec, stage, batches)
    integer = convert(model)
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    for fq in quantizers:
        fq.disable_fake_quant()
        fq.disable_observer()
    with torch.no_grad():
        floats = torch.cat([model(x).flatten() for x, _ in data]).double()
        ints = torch.cat([integer(x).flatten() for x, _ in data]).double()
    dot = float((floats * ints).sum())
    cos = dot / math.sqrt(float((floats**2).sum()) * float((ints**2).sum()))
    sqnr = 10 * math.log10(float((floats**2).sum()) / float(((floats - ints) ** 2).sum()))
    return cos, sqnr


@pytest.fixture(scope="module")
def small_report(small: hatcli.Spec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small model's analysis on one batch, written."""
    folder = tmp_path_factory.mktemp("report")
    write_outputs(analyze_stage(small, "calibration", batches=1), folder)
    return folder


def test_the_report_files_of_a_traced_model(small: hatcli.Spec, small_report: Path) -> None:
    rows = _rows(small_report)
    by_type = {row["type"]: row for row in rows.values()}
    island = by_type["softmax"]  # a traced function with no integer form
    assert island["runs_as"] == "float island"
    assert island["single_op_sqnr_db"] == "inf"
    assert island["accumulated_sqnr_db"] not in ("", "inf")  # it inherits the conv's error
    assert rows["head"]["runs_as"] == "int32 out"
    assert float(rows["conv"]["single_op_sqnr_db"]) < math.inf
    # every layer of the model is in the table of the page
    page = parse_report(small_report / "report.html")
    names = {layer.name for layer in find_layers(hatcli.build_model(small, "calibration"))}
    assert {"conv", "head", "x_quant"} <= names
    assert set(rows) == names | {OUTPUT}
    assert names <= set(page.cells)
    assert len(page.images) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    ranking = json.loads((small_report / "sensitivity.json").read_text())
    assert ranking["metric"] == "accuracy"
    assert ranking["batches"] == 1
    ranked = sorted((r for r in rows.values() if r["rank"]), key=lambda r: int(r["rank"]))
    assert [r["name"] for r in ranking["ranking"]] == [r["name"] for r in ranked]
    # the model output's figures are the float-vs-integer outputs' own
    cos, sqnr = independent_output_figures(small, "calibration", batches=1)
    assert float(rows[OUTPUT]["accumulated_cosine"]) == pytest.approx(cos, rel=1e-9)
    assert float(rows[OUTPUT]["accumulated_sqnr_db"]) == pytest.approx(sqnr, rel=1e-9)


def test_the_same_inputs_give_the_same_files(
    small: hatcli.Spec, small_report: Path, tmp_path: Path
) -> None:
    write_outputs(analyze_stage(small, "calibration", batches=1), tmp_path)
    for file in ("layers.csv", "sensitivity.json", "report.html"):
        assert (tmp_path / file).read_bytes() == (small_report / file).read_bytes()


def test_without_sensitivity_the_ranking_is_by_single_op_sqnr(small: hatcli.Spec) -> None:
    analysis = analyze_stage(small, "calibration", batches=1, sensitivity=False)
    assert analysis.sensitivity is None
    sqnr = [analysis.stats[layer.name].single.sqnr_db for layer in analysis.ranking]
    assert sqnr == sorted(sqnr)
    assert all(s.metric is None for s in analysis.suggestions.values())


# --- input errors: one line, exit 2 ---------------------------------------------------


def hat(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Any, *fragments_: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    for fragment in fragments_:
        assert fragment in lines[0], lines[0]


def test_input_errors_are_one_line(small: hatcli.Spec, tmp_path: Path) -> None:
    spec = small.path
    one_line_error(hat("analyze", spec, "--stage", "qat"), "no stage 'qat'", "calibration")
    one_line_error(
        hat("analyze", spec, "--stage", "float"), "not quantized", "calibration, qat or int_infer"
    )
    one_line_error(hat("analyze", spec, "--stage", "calibration", "--batches", "0"), "--batches")
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_line_error(
        hat("analyze", spec, "--stage", "calibration", "--output", a_file), "not a folder"
    )
    # float weights there, but the calibration stage has not run in this work_dir
    work = tmp_path / "fresh"
    work.mkdir()
    shutil.copy(small.work_dir / "float-checkpoint-last.pth.tar", work)
    one_line_error(
        hat("analyze", spec, "--stage", "calibration", "--work-dir", work),
        "no checkpoint yet",
        "hat train",
    )
    # no float weights at all: the pipeline's LoadCheckpoint says so
    one_line_error(
        hat("analyze", spec, "--stage", "calibration", "--work-dir", tmp_path / "empty"),
        "checkpoint not found",
    )


def test_missing_matplotlib_is_named_with_the_extra(
    small: hatcli.Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    one_line_error(hat("analyze", small.path, "--stage", "calibration"), "hat[analyze]")


# --- the proof: a planted outlier (slow) -----------------------------------------------

K = 120.0
PAIR = {"block_conv1", "block_conv2"}


def _digits_spec(folder: Path, qconfig: str = "") -> Path:
    """The example, trained shorter, with its stages prepared by tracing (graph mode)."""
    text = EXAMPLE.read_text().replace("work_dir: runs/{name}", f"work_dir: {folder / 'runs'}")
    text = text.replace("num_epochs: 12", "num_epochs: 6")
    text = text.replace("- {type: Float2QAT}", "- {type: Float2QAT, mode: graph}")
    if qconfig:
        anchor = "      qat_mode: &qat_mode fuse_bn\n"
        block = "".join(f"        {line}\n" for line in qconfig.splitlines())
        text = text.replace(anchor, anchor + "      qconfig:\n" + block)
    path = folder / "spec.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _calibrated_accuracy(spec_path: Path) -> float:
    spec = hatcli.load_spec(spec_path)
    summary = hatcli.run_stage(spec, "calibration")
    accuracy = float(summary["metrics"]["accuracy"])
    # the integer model itself agrees (QAT eval computes with it)
    model, data = _model_and_data(spec, "calibration")
    integer = convert(model)
    with torch.no_grad():
        correct = sum(int((integer(x).argmax(1) == y).sum()) for x, y in data)
    assert correct / sum(len(y) for _, y in data) == accuracy
    return accuracy


def _plant(weights: dict[str, torch.Tensor], channel: int) -> dict[str, torch.Tensor]:
    """One output channel of block_conv1 (its BN weight and bias) times K, the next conv's
    weights for that input channel divided by K: ReLU(K z) / K = ReLU(z), so the float
    function is the same."""
    planted = {k: v.clone() for k, v in weights.items()}
    planted["block_conv1.bn.weight"][channel] *= K
    planted["block_conv1.bn.bias"][channel] *= K
    planted["block_conv2.conv.weight"][:, channel] /= K
    return planted


def _float_outputs(spec_path: Path, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    spec = hatcli.load_spec(spec_path)
    model = hatcli.build_model(spec, "float")
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x.float()) for x, _ in hatcli.build_data_loader(spec, "val")])


def _channels_by_mean(spec_path: Path, weights: dict[str, torch.Tensor]) -> list[int]:
    """block_conv1's output channels, the most active (on val) first."""
    spec = hatcli.load_spec(spec_path)
    model = hatcli.build_model(spec, "float")
    model.load_state_dict(weights)
    model.eval()
    seen: list[torch.Tensor] = []
    handle = model.block_conv1.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        for x, _ in hatcli.build_data_loader(spec, "val"):
            model(x.float())
    handle.remove()
    mean = torch.cat(seen).mean(dim=(0, 2, 3))
    return [int(c) for c in torch.argsort(mean, descending=True, stable=True)]


def _analyze(spec_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``hat analyze SPEC --stage calibration ARGS`` in a real process, and its seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hatcli", "analyze", spec_path, "--stage", "calibration", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return result, time.perf_counter() - started


@pytest.mark.slow
def test_a_planted_outlier_is_found_and_the_suggestion_recovers_the_accuracy(
    tmp_path: Path,
) -> None:
    base = _digits_spec(tmp_path / "base")
    hatcli.run_stage(hatcli.load_spec(base), "float")
    clean = _calibrated_accuracy(base)
    checkpoint = torch.load(
        tmp_path / "base" / "runs" / "float-checkpoint-best.pth.tar", weights_only=True
    )
    weights = checkpoint["state_dict"]
    # Plant the outlier on the most active channel that costs the calibrated model more
    # than 20 points (the first, in practice).
    planted_spec = _digits_spec(tmp_path / "planted")
    for channel in _channels_by_mean(base, weights)[:3]:
        planted = _plant(weights, channel)
        reference, outputs = _float_outputs(base, weights), _float_outputs(base, planted)
        assert torch.allclose(outputs, reference, rtol=1e-4, atol=1e-4)
        assert torch.equal(outputs.argmax(1), reference.argmax(1))
        (tmp_path / "planted" / "runs").mkdir(parents=True, exist_ok=True)
        torch.save(
            {**checkpoint, "state_dict": planted},
            tmp_path / "planted" / "runs" / "float-checkpoint-best.pth.tar",
        )
        broken = _calibrated_accuracy(planted_spec)
        if clean - broken > 0.20:
            break
    assert clean - broken > 0.20, (clean, broken)

    result, seconds = _analyze(planted_spec)
    folder = tmp_path / "planted" / "runs" / "analysis" / "calibration"
    ranking = json.loads((folder / "sensitivity.json").read_text())
    rows = _rows(folder)
    quantized = [r for r in rows.values() if r["rank"]]
    by_single = sorted(quantized, key=lambda r: float(r["single_op_sqnr_db"]))
    first = ranking["ranking"][0]
    print(
        f"\nclean {clean:.4f}, planted (channel {channel}) {broken:.4f}; analyze took "
        f"{seconds:.1f}s\n{result.stdout}"
    )
    assert first["name"] in PAIR
    assert by_single[0]["name"] in PAIR
    suggestion = first["suggestion"]
    fragments.check(suggestion["fragment"])
    for line in suggestion["fragment"].splitlines():  # printed, ready to paste
        assert f"\n     {line}\n" in result.stdout

    # the model output's row is the float-vs-integer outputs' own
    cos, sqnr = independent_output_figures(hatcli.load_spec(planted_spec), "calibration")
    assert float(rows[OUTPUT]["accumulated_cosine"]) == pytest.approx(cos, rel=1e-9)
    assert float(rows[OUTPUT]["accumulated_sqnr_db"]) == pytest.approx(sqnr, rel=1e-9)
    page = parse_report(folder / "report.html")
    assert {name for name in rows if name != OUTPUT} <= set(page.cells)

    # the suggestion, pasted under model_convert_pipeline.qconfig, brings it back
    fixed_spec = _digits_spec(tmp_path / "fixed", suggestion["fragment"])
    (tmp_path / "fixed" / "runs").mkdir(parents=True, exist_ok=True)
    shutil.copy(
        tmp_path / "planted" / "runs" / "float-checkpoint-best.pth.tar",
        tmp_path / "fixed" / "runs" / "float-checkpoint-best.pth.tar",
    )
    fixed = _calibrated_accuracy(fixed_spec)
    print(f"suggestion {suggestion['label']!r}: {broken:.4f} -> {fixed:.4f} (clean {clean:.4f})")
    assert fixed >= clean - 0.01

    # a layer the rule keeps float shows as an island, exact on its own
    out = tmp_path / "fixed-analysis"
    _analyze(fixed_spec, "--batches", "1", "--no-sensitivity", "--output", str(out))
    island = _rows(out)[next(iter(suggestion["rules"]))]
    assert island["runs_as"] == "float island"
    assert island["single_op_sqnr_db"] == "inf"
