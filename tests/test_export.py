"""``hat export``: ONNX (QDQ int8 or integer ops for quantized stages) and TorchScript of a
trained stage."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hatcli.engine.stage import build_data_loader, build_model
from hatcli.errors import InputError
from hatcli.export.onnx_integer import IntegerOpsBuilder
from hatcli.export.onnx_qdq import QDQBuilder
from hatcli.export.stage import load_stage_checkpoint
from hatcli.quant import (
    DeQuantStub,
    QFunctional,
    QuantStub,
    convert,
    prepare_qat,
    qconfig_manager,
)
from hatcli.spec.spec import load_spec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RunHat = Callable[..., "subprocess.CompletedProcess[str]"]
SPEC = Path(__file__).resolve().parents[1] / "examples" / "digits" / "spec.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hat_cli: RunHat) -> tuple[Path, Path]:
    """The digits example, trained briefly through every stage: (spec, work_dir)."""
    root = tmp_path_factory.mktemp("export")
    text = SPEC.read_text()
    text = text.replace("num_epochs: 12", "num_epochs: 2").replace("num_epochs: 3", "num_epochs: 1")
    spec = root / "spec.yaml"
    spec.write_text(text)
    work = root / "W"
    done = hat_cli("train", spec, "--stage", "all", "--work-dir", work, "-q")
    assert done.returncode == 0, done.stderr
    return spec, work


def _stage_model(spec_path: Path, work: Path, stage: str) -> tuple[nn.Module, torch.Tensor, Any]:
    spec = load_spec(spec_path, work_dir=work)
    model = build_model(spec, stage)
    load_stage_checkpoint(spec, spec.stage(stage), model)
    loader = build_data_loader(spec, "val", stage)
    inputs = torch.cat([x for x, _ in loader])
    targets = torch.cat([y for _, y in loader])
    return model.eval(), inputs, targets


def _onnx_outputs(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])


def _integer_outputs(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer model's outputs and their scale (broadcastable), read at its DeQuantStub."""
    seen: dict[str, torch.Tensor] = {}

    def keep_scale(mod: nn.Module, args: Any, out: Any) -> None:
        seen["scale"] = args[0].q_scale

    handle = model.dequant.register_forward_hook(keep_scale)
    with torch.no_grad():
        out = model(inputs)
    handle.remove()
    return out, seen["scale"].double().abs().reshape(1, -1)


def _in_scales(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).abs() / scale


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.slow
def test_int_infer_onnx_matches_the_integer_model(trained: tuple[Path, Path], hat_cli: RunHat):
    spec, work = trained
    err = _ok(
        hat_cli("export", spec, "--stage", "int_infer", "--format", "onnx", "--work-dir", work)
    )
    path = work / "int_infer.onnx"
    assert path.is_file()
    assert re.search(
        r"accuracy of the exported model \(onnxruntime, 359 val samples\): 0\.\d+", err
    )
    assert "output elements identical" in err
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 13
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    weights = {i.name: i for i in graph.graph.initializer}
    assert weights["stem.weight"].data_type == onnx.TensorProto.INT8
    assert weights["stem.bias"].data_type == onnx.TensorProto.INT32

    model, inputs, _ = _stage_model(spec, work, "int_infer")
    ref, scale = _integer_outputs(model, inputs)
    got = _onnx_outputs(path, inputs)
    d = _in_scales(got, ref, scale)
    assert (d < 0.5).double().mean() >= 0.999
    assert d.max() <= 1.0
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
def test_integer_ops_onnx_is_the_integer_model_bit_for_bit(
    trained: tuple[Path, Path], hat_cli: RunHat
):
    spec, work = trained
    err = _ok(hat_cli("export", spec, "-s", "int_infer", "-f", "onnx-integer", "--work-dir", work))
    assert "exported the integer model as ONNX (integer ops)" in err
    assert "100.000% of 3590 output elements identical" in err
    path = work / "int_infer-integer.onnx"
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"ConvInteger", "MatMulInteger", "Round"} <= ops
    assert not ops & {"Conv", "Gemm", "MatMul", "QuantizeLinear", "DequantizeLinear"}
    model, inputs, _ = _stage_model(spec, work, "int_infer")
    wide = torch.cat([inputs, torch.randn(256, *inputs.shape[1:]) * 8])  # clipping too
    with torch.no_grad():
        assert torch.equal(_onnx_outputs(path, wide), model(wide))


class _EveryIntegerOp(nn.Module):
    """Standalone ReLU/ReLU6, quantized add/cat/mul, 2x2 pooling, an int8 and an int32
    linear: every integer module the ONNX graphs know."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.relu, self.relu6 = nn.ReLU(), nn.ReLU6()
        self.add, self.cat, self.mul = QFunctional(), QFunctional(), QFunctional()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 5)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        a, b = self.relu(self.conv_a(x)), self.relu6(self.conv_b(x))
        c = self.cat.cat([self.add.add(a, b), a], dim=1)
        p = self.pool(self.mul.mul(c, c)).flatten(1)
        return self.dequant(self.fc2(self.fc1(p)))

    def set_qconfig(self) -> None:
        self.qconfig = qconfig_manager.get_default_qat_qconfig()
        self.fc2.qconfig = qconfig_manager.get_default_qat_out_qconfig()


def _integer(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    model.set_qconfig()
    qat = prepare_qat(model).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            qat(torch.randn(16, *shape, generator=g))
    return convert(qat)


@pytest.mark.parametrize("arch", ["ResNet18", "MobileNetV2", "EveryIntegerOp"])
@pytest.mark.slow
def test_integer_ops_graph_equals_the_integer_model(arch: str) -> None:
    from hat_models.mobilenet_v2 import MobileNetV2
    from hat_models.resnet import ResNet18

    shape = (3, 8, 8) if arch == "EveryIntegerOp" else (3, 32, 32)
    torch.manual_seed(0)
    if arch == "EveryIntegerOp":
        model: nn.Module = _EveryIntegerOp()
    else:
        model = ResNet18(width=8) if arch == "ResNet18" else MobileNetV2(width_mult=0.25)
        model.eval().fuse_model()
    integer = _integer(model, shape)
    proto, _ = IntegerOpsBuilder(integer, onnx).build(torch.zeros(2, *shape))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = integer(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_integer_ops_need_a_quantized_stage(trained: tuple[Path, Path], hat_cli: RunHat):
    spec, work = trained
    result = hat_cli("export", spec, "-s", "float", "-f", "onnx-integer", "--work-dir", work)
    assert result.returncode == 2 and "needs a quantized stage" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (work / "float-integer.onnx").exists()


@pytest.mark.slow
def test_qat_onnx_follows_its_integer_form(trained: tuple[Path, Path], hat_cli: RunHat):
    spec, work = trained
    out = work / "elsewhere" / "qat-model.onnx"
    err = _ok(
        hat_cli("export", spec, "-s", "qat", "-f", "onnx", "--work-dir", work, "--output", out)
    )
    assert "agreement with the hat QAT model" in err
    model, inputs, _ = _stage_model(spec, work, "qat")
    integer = convert(model)
    ref, scale = _integer_outputs(integer, inputs)
    got = _onnx_outputs(out, inputs)
    d = _in_scales(got, ref, scale)
    assert (d < 0.5).double().mean() >= 0.999 and d.max() <= 1.0
    with torch.no_grad():
        qat_out = model(inputs)
    # The QAT model itself: the integer model's tolerance (an int8 rounding upstream of
    # the int32 classifier may differ on a rare sample), so compare the decisions.
    assert (got.argmax(1) == qat_out.argmax(1)).double().mean() >= 0.99
    assert (_in_scales(got, qat_out, scale) < 0.5).double().mean() >= 0.99


@pytest.mark.slow
def test_float_onnx_and_torchscript(trained: tuple[Path, Path], hat_cli: RunHat):
    spec, work = trained
    _ok(hat_cli("export", spec, "--stage", "float", "--format", "onnx", "--work-dir", work))
    model, inputs, _ = _stage_model(spec, work, "float")
    with torch.no_grad():
        ref = model(inputs)
    torch.testing.assert_close(
        _onnx_outputs(work / "float.onnx", inputs), ref, atol=1e-4, rtol=1e-4
    )

    err = _ok(hat_cli("export", spec, "-s", "int_infer", "-f", "torchscript", "--work-dir", work))
    assert "100.000% of 3590 output elements identical" in err
    loaded = torch.jit.load(str(work / "int_infer-exported.pt"))
    integer, inputs, _ = _stage_model(spec, work, "int_infer")
    with torch.no_grad():
        assert torch.equal(loaded(inputs), integer(inputs))


@pytest.mark.slow
def test_a_stage_without_its_checkpoint_is_one_line(
    trained: tuple[Path, Path], hat_cli: RunHat, tmp_path: Path
):
    spec, _ = trained
    result = hat_cli("export", spec, "--stage", "qat", "--format", "onnx", "--work-dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "checkpoint not found" in result.stderr
    assert not (tmp_path / "qat.onnx").exists()


@pytest.mark.slow
def test_missing_onnx_says_how_to_install(
    trained: tuple[Path, Path], hat_cli: RunHat, tmp_path: Path
):
    spec, work = trained
    fake = tmp_path / "site" / "onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('onnx is not installed')\n")
    result = hat_cli(
        "export",
        spec,
        "--stage",
        "int_infer",
        "--format",
        "onnx",
        "--work-dir",
        work,
        "--output",
        tmp_path / "x.onnx",
        env={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "hat[onnx]" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


class _WithSoftsign(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(4, 3)
        self.dequant = DeQuantStub()
        self.head = nn.Sequential(nn.Softsign())  # a float module with no ONNX form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dequant(self.fc(self.quant(x))))

    def set_qconfig(self) -> None:
        self.qconfig = qconfig_manager.get_default_qat_qconfig()
        self.head.qconfig = None


def test_a_module_without_an_onnx_form_is_named():
    model = _WithSoftsign()
    model.set_qconfig()
    qat = prepare_qat(model)
    qat(torch.rand(8, 4))
    integer = convert(qat)
    with pytest.raises(InputError, match=r"cannot export head\.0 \(Softsign\)"):
        QDQBuilder(integer, onnx).build(torch.rand(2, 4))


@pytest.mark.slow
def test_cli_rejects_an_unknown_format(trained: tuple[Path, Path], hat_cli: RunHat):
    spec, work = trained
    result = hat_cli("export", spec, "--stage", "float", "--format", "tflite", "--work-dir", work)
    assert result.returncode == 2 and "--format" in result.stderr


@pytest.mark.slow
def test_torchscript_of_a_qat_stage_is_refused_in_one_line(
    trained: tuple[Path, Path], hat_cli: RunHat
) -> None:
    spec, work = trained
    out = work / "elsewhere" / "qat-model.pt"
    args = ("export", spec, "-s", "qat", "-f", "torchscript", "--work-dir", work, "-o", out)
    result = hat_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: a QAT model has no TorchScript form")
    assert "Traceback" not in result.stderr and not out.exists()
