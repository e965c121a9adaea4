"""Bring your own model: plain PyTorch models of 13 architecture families (tests/zoo, no
hat code in them), installed as a third-party plugin, go through every stage of a spec
with a bare ``Float2QAT`` (graph-mode preparation), and their integer models are exact.

For each family, once (the ``run`` fixture): a tiny dataset in the on-disk ``NpzArrays``
format (10-class images, or per-pixel masks for the segmentation models), a spec with the
float, calibration, qat and int_infer stages (one epoch each), and ``hat train SPEC
--stage all`` in a subprocess that finds the models through the plugin's entry point.
Then, in this process, three tests: every stage finished and the QAT model
(``hatcli.quant.graph.prepare`` of the plugin's model, with the best QAT checkpoint) in
eval equals its ``convert`` bit for bit on the val set, which is the model int_infer
measured; ``hat export --format onnx-integer`` equals the integer model; ``hat export
--format onnx`` (QDQ) agrees with it (see the QDQ test for how closely).

The fast tests at the top check what segmentation needs from the data and the metrics.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hat_datasets.npz_arrays import npz_arrays
from torch import nn
from typer.testing import CliRunner
from zoo import INPUT_SHAPE, MODELS, SEGMENTATION
from zoo.plugin import PLUGIN_MODULE, PREFIX, install_plugin, plugin_module

from hatcli import plugins
from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.data_checks import checked_forward
from hatcli.engine.metric import TopKAccuracy
from hatcli.errors import DataError
from hatcli.quant import QTensor, convert

RunHat = Callable[..., "subprocess.CompletedProcess[str]"]

CLASSES, SEG_CLASSES = 10, 4
TRAIN, VAL = 64, 32
STAGES = ("float", "calibration", "qat", "int_infer")


# --- segmentation targets: the dataset, the loss checks and the accuracy metric ---------


def test_npz_arrays_reads_per_pixel_masks(tmp_path: Path) -> None:
    masks = np.random.default_rng(0).integers(0, SEG_CLASSES, (5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "seg.npz", inputs=np.zeros((5, 3, 6, 7), np.float32), targets=masks)
    data = npz_arrays(str(tmp_path / "seg.npz"))
    x, y = data[2]
    assert x.shape == (3, 6, 7)
    assert y.dtype == torch.int64 and y.shape == (6, 7)
    assert torch.equal(y, torch.from_numpy(masks[2]).long())


def test_topk_accuracy_counts_the_pixels_of_segmentation_masks() -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, SEG_CLASSES, 4, 5, generator=g)
    targets = torch.randint(0, SEG_CLASSES, (3, 4, 5), generator=g)
    targets[0] = outputs[0].argmax(0)  # the first image all right
    top1, top2 = TopKAccuracy(1), TopKAccuracy(2)
    for metric in (top1, top2):
        metric.update(outputs[:2], targets[:2], torch.tensor(0.0))  # two batches
        metric.update(outputs[2:], targets[2:], torch.tensor(0.0))
    pixels = targets.numel()
    assert top1.total == top2.total == pixels
    correct = int((outputs.argmax(1) == targets).sum())
    assert correct >= 20  # the first image's pixels
    assert top1.compute() == {"accuracy": correct / pixels}
    in_top2 = (outputs.topk(2, dim=1).indices == targets.unsqueeze(1)).any(1)
    assert top2.compute() == {"top2_accuracy": int(in_top2.sum()) / pixels}
    # classification is unchanged: one target a sample
    clf = TopKAccuracy(1)
    clf.update(torch.eye(4), torch.tensor([0, 1, 3, 3]), torch.tensor(0.0))
    assert clf.compute() == {"accuracy": 0.75}


def test_cross_entropy_and_label_checks_take_segmentation_masks() -> None:
    model = nn.Conv2d(3, SEG_CLASSES, 1)
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, SEG_CLASSES, (2, 4, 4))
    out, loss = checked_forward(model, nn.CrossEntropyLoss(), x, y, "val data", "batch 1")
    assert out.shape == (2, SEG_CLASSES, 4, 4)
    assert torch.allclose(loss, F.cross_entropy(out, y))
    y[1, 2, 3] = SEG_CLASSES  # a label the model does not have
    with pytest.raises(DataError, match=f"has label {SEG_CLASSES}; the model's 4 classes"):
        checked_forward(model, nn.CrossEntropyLoss(), x, y, "val data", "batch 1")


# --- the end-to-end runs -----------------------------------------------------------------


def _classification(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes: a smooth colour pattern per class (the same in every split) plus noise."""
    coarse = torch.randn(CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    templates = F.interpolate(coarse, size=INPUT_SHAPE[1:], mode="bilinear")
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    y = y[torch.randperm(n, generator=g)]
    x = templates[y] + 0.5 * torch.randn(n, *INPUT_SHAPE, generator=g)
    return x.numpy(), y.numpy().astype(np.int64)


def _segmentation(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel masks [N, H, W]: background (class 0) with up to three rectangles of
    classes 1..3; each class has its own colour, under noise."""
    rng = np.random.default_rng(seed)
    h, w = INPUT_SHAPE[1:]
    masks = np.zeros((n, h, w), np.uint8)
    for mask in masks:
        for cls in rng.permutation(np.arange(1, SEG_CLASSES))[: rng.integers(1, SEG_CLASSES)]:
            top, left = rng.integers(0, h - 8), rng.integers(0, w - 8)
            mask[top : top + rng.integers(8, 17), left : left + rng.integers(8, 17)] = cls
    colours = np.random.default_rng(0).normal(size=(SEG_CLASSES, 3)).astype(np.float32)
    images = colours[masks].transpose(0, 3, 1, 2)
    images = images + 0.3 * rng.normal(size=images.shape).astype(np.float32)
    return images.astype(np.float32), masks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for task, make in (("classification", _classification), ("segmentation", _segmentation)):
        for split, n, seed in (("train", TRAIN, 1), ("val", VAL, 2)):
            x, y = make(n, seed)
            np.savez(root / f"{task}-{split}.npz", inputs=x, targets=y)
    return root


@pytest.fixture(scope="module")
def zoo_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a subprocess that has the zoo plugin installed."""
    return install_plugin(tmp_path_factory.mktemp("site"))


def _task(name: str) -> str:
    return "segmentation" if name in SEGMENTATION else "classification"


def _num_classes(name: str) -> int:
    return SEG_CLASSES if name in SEGMENTATION else CLASSES


SPEC = """\
version: 1
name: byom-{lower}
work_dir: "{work_dir}"
seed: 0
device: auto

model: &model {{type: {type}, num_classes: {classes}}}

data:
  train: {{type: NpzArrays, path: "{data}/{task}-train.npz", batch_size: 16, shuffle: true}}
  val: {{type: NpzArrays, path: "{data}/{task}-val.npz", batch_size: 32}}

stages:
  float:
    trainer: Trainer
    model: *model
    optimizer: {{type: SGD, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}}
    num_epochs: 1
    callbacks:
      - {{type: Validation, data: val}}
      - {{type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy, mode: max}}

  calibration:
    trainer: Calibrator
    model_convert_pipeline:
      converters:
        - {{type: LoadCheckpoint, checkpoint_path: "{{work_dir}}/float-checkpoint-best.pth.tar"}}
        - {{type: Float2QAT}}
    num_steps: 3
    callbacks:
      - {{type: Validation, data: val}}
      - {{type: Checkpoint, name_prefix: calibration-}}

  qat:
    trainer: Trainer
    model_convert_pipeline:
      converters:
        - {{type: Float2QAT}}
        - type: LoadCheckpoint
          checkpoint_path: "{{work_dir}}/calibration-checkpoint-last.pth.tar"
    optimizer: {{type: SGD, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}}
    num_epochs: 1
    callbacks:
      - {{type: Validation, data: val}}
      - {{type: Checkpoint, name_prefix: qat-, monitor_metric_key: accuracy, mode: max}}

  int_infer:
    trainer: Trainer
    model_convert_pipeline:
      converters:
        - {{type: Float2QAT}}
        - {{type: LoadCheckpoint, checkpoint_path: "{{work_dir}}/qat-checkpoint-best.pth.tar"}}
        - {{type: QAT2Quantize}}
    num_epochs: 0
    callbacks:
      - {{type: Validation, data: val}}
      - {{type: SaveTraced}}
      - {{type: Checkpoint, name_prefix: int_infer-}}
"""


def _write_spec(root: Path, name: str, data: Path) -> tuple[Path, Path]:
    work = root / "work"
    spec = root / "spec.yaml"
    text = SPEC.format(
        lower=name.lower(),
        work_dir=work,
        type=PREFIX + name,
        classes=_num_classes(name),
        data=data,
        task=_task(name),
    )
    spec.write_text(text)
    return spec, work


def _val(data: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(data / f"{_task(name)}-val.npz") as arrays:
        return torch.from_numpy(arrays["inputs"]), torch.from_numpy(arrays["targets"]).long()


def _output_step(integer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The scale of the integer model's output grid, broadcastable to ``out``: the scale of
    the last integer tensor a module turned into floats (its dequantization)."""
    seen: list[QTensor] = []

    def hook(mod: nn.Module, args: Any, result: Any) -> None:
        ints = [a for a in args if isinstance(a, QTensor)]
        if ints and isinstance(result, torch.Tensor) and not isinstance(result, QTensor):
            seen.append(ints[0])

    handles = [m.register_forward_hook(hook) for m in integer.modules()]
    try:
        with torch.no_grad():
            integer(x)
    finally:
        for h in handles:
            h.remove()
    assert seen, "no module of the integer model dequantized its output"
    last = seen[-1]
    scale = last.q_scale.double().abs()
    if last.q_axis is None:
        return scale
    shape = [1] * out.dim()
    shape[last.q_axis] = -1  # a per-channel output (a classifier's int32 output)
    return scale.reshape(shape)


def _onnx_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _export(spec: Path, fmt: str) -> str:
    """``hat export SPEC --stage int_infer --format FMT``, in this process (the plugin is
    registered here): returns its report."""
    from hatcli.cli import app

    result = CliRunner().invoke(app, ["export", str(spec), "-s", "int_infer", "-f", fmt])
    assert result.exit_code == 0, result.output
    return result.output


def _accuracy(out: torch.Tensor, targets: torch.Tensor) -> float:
    return int((out.argmax(1) == targets).sum()) / targets.numel()


@dataclass
class Run:
    """One family's ``hat train SPEC --stage all``, shared by the tests of that family."""

    name: str
    spec: Path
    work: Path
    done: subprocess.CompletedProcess[str]

    def check_finished(self) -> None:
        """Exit 0; else the stages that did not finish and hat's last line come first."""
        if self.done.returncode == 0:
            return
        left = [s for s in STAGES if not (self.work / s / "summary.json").is_file()]
        lines = self.done.stderr.strip().splitlines() or ["(no output)"]
        raise AssertionError(
            f"hat train exited {self.done.returncode}, stages not finished: "
            f"{', '.join(left)}: {lines[-1]}\n{self.done.stderr[-3000:]}"
        )


@pytest.fixture(scope="module", params=list(MODELS))
def run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    data_dir: Path,
    zoo_site: dict[str, str],
    hat_cli: RunHat,
) -> Run:
    """``hat train SPEC --stage all`` of one family, the plugin found by its entry point.

    One thread: these models are tiny, and two threads on two busy cores are several
    times slower than one."""
    name = request.param
    root = tmp_path_factory.mktemp(name.lower())
    spec, work = _write_spec(root, name, data_dir)
    env = {**zoo_site, "OMP_NUM_THREADS": "1"}
    done = hat_cli("train", spec, "--stage", "all", "-q", "--verbose", cwd=root, env=env)
    return Run(name, spec, work, done)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _integer_model(run: Run, plugin: Any) -> tuple[nn.Module, nn.Module]:
    """(QAT model in eval, its integer model): ``prepare`` of the plugin's model with the
    best QAT checkpoint loaded, and ``convert`` of it."""
    from hatcli.quant.graph import prepare

    plugin(plugin_module(), PLUGIN_MODULE)
    factory = plugins.get_component("models", PREFIX + run.name).factory
    qat = prepare(factory(num_classes=_num_classes(run.name)))
    assert isinstance(qat, torch.fx.GraphModule)
    qat.load_state_dict(load_checkpoint(run.work / "qat-checkpoint-best.pth.tar")["state_dict"])
    qat.eval()
    return qat, convert(qat)


@pytest.mark.slow
def test_every_stage_runs_and_qat_eval_is_the_integer_model(
    run: Run, data_dir: Path, plugin: Any
) -> None:
    run.check_finished()
    for stage in STAGES:
        assert json.loads((run.work / stage / "summary.json").read_text())["finished"]
    assert (run.work / "int_infer-traced.pt").is_file()

    qat, integer = _integer_model(run, plugin)
    x, y = _val(data_dir, run.name)
    with torch.no_grad():
        q_out, i_out = qat(x), integer(x)
    spatial = INPUT_SHAPE[1:] if run.name in SEGMENTATION else ()
    assert i_out.shape == (VAL, _num_classes(run.name), *spatial)
    assert not isinstance(i_out, QTensor)
    assert torch.equal(q_out, i_out)
    # ... and it is the model the int_infer stage validated
    measured = json.loads((run.work / "int_infer" / "summary.json").read_text())["metrics"]
    assert measured["accuracy"] == _accuracy(i_out, y)


@pytest.mark.slow
def test_integer_ops_onnx_is_the_integer_model(run: Run, data_dir: Path, plugin: Any) -> None:
    run.check_finished()
    _, integer = _integer_model(run, plugin)
    report = _export(run.spec, "onnx-integer")
    assert "exported the integer model as ONNX (integer ops)" in report
    x, _ = _val(data_dir, run.name)
    with torch.no_grad():
        expected = integer(x)
    assert torch.equal(_onnx_outputs(run.work / "int_infer-integer.onnx", x), expected)


@pytest.mark.slow
def test_qdq_onnx_agrees_with_the_integer_model(run: Run, data_dir: Path, plugin: Any) -> None:
    """QDQ runs each op in float32 between quantize/dequantize pairs, so an int8 value
    lands one step away now and then (each op's export is within one step of its
    integer op: tests/test_export_ops.py), and a whole network carries such a step on to
    its output, scaled by the weights after it: an int32 output of a deep network can
    move by many of its tiny steps. End to end, then: almost every output (>= 98%) within
    one output step, beyond float32's own rounding of the value (two ulps: an int32
    logit of many steps of 1e-9 is not exact in float32 on either side), and the
    predicted class the same for >= 99.9% of the outputs (samples or pixels)."""
    run.check_finished()
    _, integer = _integer_model(run, plugin)
    _export(run.spec, "onnx")
    x, _ = _val(data_dir, run.name)
    with torch.no_grad():
        expected = integer(x)
    got = _onnx_outputs(run.work / "int_infer.onnx", x)
    step = _output_step(integer, x, expected)
    diff = (got.double() - expected.double()).abs()
    float32_rounding = 2 * torch.finfo(torch.float32).eps * expected.double().abs()
    within = float((((diff - float32_rounding).clamp(min=0) / step) <= 1.0).double().mean())
    same_class = float((got.argmax(dim=1) == expected.argmax(dim=1)).double().mean())
    assert within >= 0.98 and same_class >= 0.999, (
        f"QDQ: {100 * within:.2f}% of outputs within one step of the integer model, "
        f"{100 * same_class:.3f}% of predicted classes the same (max "
        f"{float((diff / step).max()):.4g} steps)"
    )
