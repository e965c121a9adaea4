"""ONNX export, in both forms, of each integer module for vision ops and of graph-prepared
plain models: the integer-op graph equals the integer model bit for bit in ONNX Runtime,
the QDQ graph is within one output step of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hatcli.errors import InputError
from hatcli.export.exporter import Exporter
from hatcli.export.onnx_integer import IntegerOpsBuilder, OnnxIntegerExporter
from hatcli.export.onnx_qdq import OnnxExporter, QDQBuilder
from hatcli.export.result import ExportResult
from hatcli.export.stage import model_kind
from hatcli.quant import convert
from hatcli.quant.graph import prepare

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

Op = Callable[[torch.Tensor], torch.Tensor]
FLOAT_OPS = {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear", "AveragePool"}


class _OneOp(nn.Module):
    """A plain model that applies one function; graph-mode preparation quantizes it
    between a QuantStub and a DeQuantStub."""

    def __init__(self, fn: Op, module: nn.Module | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.op = module if module is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.op(x))


def _integer(model: nn.Module, shape: tuple[int, ...], **options: Any) -> nn.Module:
    """``model`` prepared in graph mode, observed on a few random batches, converted."""
    qat = prepare(model.eval(), **options).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            qat(torch.randn(8, *shape, generator=g))
    return convert(qat.eval())


def _run(proto: Any, x: torch.Tensor) -> np.ndarray:
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"input": x.numpy()})[0]
    return out


def _inputs(shape: tuple[int, ...], n: int = 16) -> torch.Tensor:
    """Random inputs, some beyond the observed range (the clamps are exercised)."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1)) * 2


def _steps(got: np.ndarray, ref: torch.Tensor, scale: Any) -> int:
    """The largest difference in output steps (both are on the output grid)."""
    s, axis = scale
    s = s.double().abs()
    if axis is not None:
        s = s.reshape([-1 if d == axis else 1 for d in range(ref.dim())])
    return int(((torch.from_numpy(got).double() - ref.double()).abs() / s).round().max())


def _both_forms(integer: nn.Module, shape: tuple[int, ...]) -> dict[str, set[str]]:
    """Check both ONNX forms of ``integer`` on random inputs; the ops each form uses."""
    x = _inputs(shape)
    with torch.no_grad():
        ref = integer(x)
        int_proto, _ = IntegerOpsBuilder(integer, onnx).build(x[:2])
        qdq_proto, scales = QDQBuilder(integer, onnx).build(x[:2])
    assert np.array_equal(_run(int_proto, x), ref.numpy())
    assert _steps(_run(qdq_proto, x), ref, scales[0]) <= 1
    return {
        "integer": {n.op_type for n in int_proto.graph.node},
        "qdq": {n.op_type for n in qdq_proto.graph.node},
    }


# --- one integer module at a time ------------------------------------------------------

S = (3, 9, 9)
OPS: dict[str, tuple[Op, set[str], set[str]]] = {
    # name: (the op, integer-form ops it needs, QDQ-form ops it needs)
    "max_pool": (lambda x: F.max_pool2d(x, 3, 2, 1), {"MaxPool"}, {"MaxPool"}),
    "max_pool_ceil_dilated": (
        lambda x: F.max_pool2d(x, 2, 2, 1, dilation=2, ceil_mode=True),
        {"MaxPool"},
        {"MaxPool"},
    ),
    "avg_pool": (lambda x: F.avg_pool2d(x, 3, 2, 1), {"ConvInteger"}, {"AveragePool"}),
    "avg_pool_no_pad_ceil": (
        lambda x: F.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False),
        {"ConvInteger"},
        {"AveragePool", "Mul"},
    ),
    "avg_pool_divisor": (
        lambda x: F.avg_pool2d(x, 2, divisor_override=3),
        {"ConvInteger"},
        {"AveragePool", "Mul"},
    ),
    "adaptive_avg_pool_uneven": (
        lambda x: F.adaptive_avg_pool2d(x, (4, 2)),
        {"MatMul", "Round"},
        {"MatMul"},
    ),
    "adaptive_avg_pool_blocks": (
        lambda x: F.adaptive_avg_pool2d(x, 3),
        {"ReduceSum"},
        {"AveragePool"},
    ),
    "mean": (lambda x: x.mean((2, 3), keepdim=True), {"ReduceSum"}, {"ReduceMean"}),
    "mean_last": (lambda x: torch.mean(x, -1), {"ReduceSum"}, {"ReduceMean"}),
    "sigmoid": (torch.sigmoid, {"Gather"}, {"Sigmoid"}),
    "tanh": (torch.tanh, {"Gather"}, {"Tanh"}),
    "gelu": (F.gelu, {"Gather"}, {"Erf"}),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), {"Gather"}, {"Tanh"}),
    "silu": (F.silu, {"Gather"}, {"Sigmoid", "Mul"}),
    "hardswish": (F.hardswish, {"Gather"}, {"HardSwish"}),
    "hardsigmoid": (F.hardsigmoid, {"Gather"}, {"HardSigmoid"}),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), {"Gather"}, {"LeakyRelu"}),
    "elu": (F.elu, {"Gather"}, {"Elu"}),
    "mish": (F.mish, {"Gather"}, {"Softplus", "Tanh"}),
    "softplus": (lambda x: F.softplus(x, beta=2, threshold=1), {"Gather"}, {"Softplus"}),
    "clamp": (lambda x: torch.clamp(x, -0.5, 0.7), {"Gather"}, {"Clip"}),
    "scalar_ops": (lambda x: 1 - x * 0.5, {"Gather"}, {"Sub", "Mul"}),
    "neg": (lambda x: -x, {"Gather"}, {"Mul"}),
    "add_broadcast": (lambda x: x + x[:, :1], {"Round"}, {"Add"}),
    "sub": (lambda x: x - torch.sigmoid(x), {"Round"}, {"Sub"}),
    "mul": (lambda x: x * x.mean((2, 3), keepdim=True), {"Mul"}, {"Mul"}),
    "cat": (lambda x: torch.cat([x, torch.sigmoid(x)], 1), {"Concat"}, {"Concat"}),
    "stack": (lambda x: torch.stack([x, torch.tanh(x)], -1), {"Unsqueeze"}, {"Unsqueeze"}),
    "nearest": (lambda x: F.interpolate(x, scale_factor=1.5), {"Gather"}, {"Gather"}),
    "nearest_down": (lambda x: F.interpolate(x, size=(3, 4)), {"Gather"}, {"Gather"}),
    "bilinear": (
        lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"),
        {"Gather", "Round"},
        {"Resize"},
    ),
    "bilinear_corners": (
        lambda x: F.interpolate(x, size=(13, 6), mode="bilinear", align_corners=True),
        {"Gather", "Round"},
        {"Resize"},
    ),
    "bilinear_like": (
        lambda x: F.interpolate(torch.tanh(x), size=x.shape[-2:], mode="bilinear"),
        {"Gather", "Round"},
        {"Resize"},
    ),
}


@pytest.mark.parametrize("name", list(OPS))
def test_an_integer_module_in_both_forms(name: str) -> None:
    fn, integer_ops, qdq_ops = OPS[name]
    ops = _both_forms(_integer(_OneOp(fn), S), S)
    assert integer_ops <= ops["integer"] and not ops["integer"] & FLOAT_OPS
    assert qdq_ops | {"QuantizeLinear", "DequantizeLinear"} <= ops["qdq"]


MODULES: dict[str, tuple[nn.Module, Op, set[str], set[str]]] = {
    # name: (the module, what follows it, integer-form ops, QDQ-form ops)
    "sigmoid": (nn.Sigmoid(), F.relu, {"Gather"}, {"Sigmoid"}),
    "gelu": (nn.GELU(approximate="tanh"), F.relu, {"Gather"}, {"Tanh"}),
    "hardtanh": (nn.Hardtanh(-0.5, 0.5), F.relu, {"Gather"}, {"Clip"}),
    "dropout": (nn.Dropout(), torch.sigmoid, set(), set()),
    "upsample_bilinear": (nn.UpsamplingBilinear2d(scale_factor=2), F.relu, {"Gather"}, {"Resize"}),
    "conv_transpose": (
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        F.relu,
        {"ConvInteger", "Pad"},
        {"ConvTranspose"},
    ),
    "conv_transpose_int32": (  # the model's output: int32, a scale per channel
        nn.ConvTranspose2d(3, 4, 3, stride=1, padding=3),
        lambda x: x,
        {"ConvInteger", "Slice"},
        {"ConvTranspose"},
    ),
    "conv_transpose_groups": (
        nn.ConvTranspose2d(3, 6, (3, 2), stride=(2, 3), padding=(2, 0), groups=3, dilation=(1, 2)),
        torch.sigmoid,
        {"ConvInteger"},
        {"ConvTranspose", "Transpose"},
    ),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_a_module_in_both_forms(name: str) -> None:
    module, after, integer_ops, qdq_ops = MODULES[name]
    ops = _both_forms(_integer(_OneOp(after, module), S), S)
    assert integer_ops <= ops["integer"] and not ops["integer"] & FLOAT_OPS
    assert qdq_ops <= ops["qdq"]


def test_a_function_with_no_onnx_op_is_its_table_in_qdq() -> None:
    """An elementwise function with no float ONNX form: the QDQ graph gathers its table."""
    integer = _integer(_OneOp(torch.sigmoid), S)
    elementwise = next(m for m in integer.modules() if type(m).__name__ == "Elementwise")
    elementwise.fn = lambda x: torch.sigmoid(x) ** 2  # type: ignore[assignment]
    elementwise._tables.clear()
    ops = _both_forms(integer, S)
    assert "Gather" in ops["qdq"] and "Sigmoid" not in ops["qdq"]


# --- shape operations in a GraphModule -------------------------------------------------


class _Layout(nn.Module):
    """Every shape operation graph mode leaves in the integer model's code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(b, [1, 3], dim=1)
        n, ch, h, w = a.size()
        a = a.view(n, 2, ch // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        rows = torch.unbind(d, dim=2)
        e = torch.stack([rows[3], rows[0], rows[-1]], dim=2)
        f = a[:, 1:, ::2, 2:-1][..., None, :].squeeze(-2)
        g = c[:, 0][:, None, 1::2].flatten(2).unsqueeze(-1)
        size = getattr(g, "shape")  # noqa: B009 - what fx writes for x.shape
        g = g.reshape(size[0], -1).permute(0, 1)[:, None, :, None]
        return torch.cat([f.flatten(1), e[:, :, 1, :].flatten(1), g.flatten(1)], dim=1)


def test_shape_operations_of_a_graph_module_record() -> None:
    integer = _integer(_Layout(), S)
    assert isinstance(integer, torch.fx.GraphModule)
    ops = _both_forms(integer, S)
    assert {"Split", "Slice", "Transpose", "Reshape"} <= ops["integer"]


def test_an_index_that_moves_the_batch_is_refused() -> None:
    integer = _integer(_OneOp(lambda x: torch.sigmoid(x)[1:]), S)
    with pytest.raises(InputError, match=r"torch\.__getitem__ .*: it changes the batch"):
        IntegerOpsBuilder(integer, onnx).build(torch.zeros(2, *S))


# --- float islands ---------------------------------------------------------------------


class _Islands(nn.Module):
    """ConvNeXt's block: a float LayerNorm over channels last, a Linear on a 4-D input,
    GELU as a function (kept float), a layer scale (a parameter a quantized mul reads),
    then a float Softmax and add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.linspace(0.2, 1.0, 8))
        self.softmax = nn.Softmax(dim=1)
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.fc(self.norm(x.permute(0, 2, 3, 1)))
        y = (self.gamma * F.gelu(y)).permute(0, 3, 1, 2)
        y = y + self.softmax(y) * 0.5
        return self.conv(y) - x


def test_float_islands_export_their_float_ops() -> None:
    integer = _integer(_Islands(), S, qconfig={"types": {"gelu": "float", "add": "float"}})
    x = _inputs(S, 32)
    with torch.no_grad():
        ref = integer(x)
        protos = [b(integer, onnx).build(x[:2]) for b in (IntegerOpsBuilder, QDQBuilder)]
    for proto, scales in protos:
        ops = {n.op_type for n in proto.graph.node}
        assert {"LayerNormalization", "Softmax", "Erf", "Add"} <= ops
        got = _run(proto, x)
        # Float ops agree to float32 rounding: a value within an ulp of a rounding boundary
        # may be quantized one step apart after the island, nothing more.
        assert _steps(got, ref, scales[0]) <= 1
        assert (got == ref.numpy()).mean() >= 0.999
    assert "MatMulInteger" in {n.op_type for n in protos[0][0].graph.node}


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.LocalResponseNorm(2)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.exp(self.norm(self.conv(x))))


def test_a_float_module_or_function_with_no_onnx_form_is_named() -> None:
    integer = _integer(_Unknown(), S)
    with pytest.raises(InputError, match=r"cannot export norm \(LocalResponseNorm\)"):
        QDQBuilder(integer, onnx).build(torch.zeros(2, *S))
    integer.norm = nn.Identity()
    with pytest.raises(InputError, match=r"torch\.exp in GraphModule\.forward: no ONNX form"):
        IntegerOpsBuilder(integer, onnx).build(torch.zeros(2, *S))


# --- graph-prepared plain models, exported as hat export does --------------------------


class _Basic(nn.Module):
    """ResNet's basic block after a stem: ``out += identity``."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem(x)))
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class _Shuffle(nn.Module):
    """ShuffleNetV2's unit: split, a branch, concat, channel shuffle."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        half = c // 2
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half),
            nn.BatchNorm2d(half),
        )
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.branch(b)), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.fc(x.mean([2, 3]))


class _SqueezeExcite(nn.Module):
    """MobileNetV3's SE block: ``x * hardsigmoid(fc(relu(fc(mean(x)))))``."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)
        self.gate = nn.Hardsigmoid()
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.stem(x))
        s = self.gate(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x * s)


def _export(exporter: Exporter, model: nn.Module, x: torch.Tensor, path: Path) -> ExportResult:
    """Export as ``hat export`` does (its exporter on the model, the batches to check on)."""
    result = ExportResult("stage", "onnx", path, model_kind(model))
    batches = [(x[i : i + 8], torch.zeros(len(x[i : i + 8]), dtype=torch.long)) for i in (0, 8)]
    with torch.no_grad():
        exporter.export(model, x[:2], batches, result, path)
    return result


@pytest.mark.parametrize("arch", [_Basic, _Shuffle, _SqueezeExcite])
def test_a_graph_prepared_model_exports_as_hat_export_does(arch: type, tmp_path: Path) -> None:
    shape = (3, 8, 8)
    torch.manual_seed(0)
    integer = _integer(arch(), shape)
    assert model_kind(integer) == "integer"
    x = _inputs(shape)
    with torch.no_grad():
        ref = integer(x)
    result = _export(OnnxIntegerExporter(), integer, x, tmp_path / "integer.onnx")
    assert result.agreements[-1].identical == 1.0
    assert np.array_equal(_run(onnx.load(str(tmp_path / "integer.onnx")), x), ref.numpy())
    result = _export(OnnxExporter(), integer, x, tmp_path / "qdq.onnx")
    steps = result.agreements[-1].max_diff_scales
    assert steps is not None and steps < 1.5  # one output step at most


def test_a_graph_prepared_qat_model_exports_its_integer_form(tmp_path: Path) -> None:
    shape = (3, 8, 8)
    torch.manual_seed(0)
    qat = prepare(_SqueezeExcite().eval()).train()
    with torch.no_grad():
        for _ in range(3):
            qat(torch.randn(8, *shape))
    qat.eval()
    x = _inputs(shape)
    result = _export(OnnxIntegerExporter(), qat, x, tmp_path / "qat.onnx")
    assert result.kind == "qat"
    assert [a.identical for a in result.agreements] == [1.0, 1.0]
