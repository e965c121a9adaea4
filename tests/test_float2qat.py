"""Float2QAT in a spec: graph or eager preparation, the qconfig section, leaf modules, and
one located line for each mistake."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn

import hatcli
from hatcli.nn import ConvBNReLU2d
from hatcli.quant import (
    DeQuantStub,
    QuantizationError,
    QuantStub,
    convert,
    prepare_qat,
    qconfig_manager,
)
from hatcli.quant.graph import records
from hatcli.quant.graph.report import eager_records
from hatcli.quant.nn import qat

PLUGIN = """
import torch
import hatcli
from hatcli.nn import ConvBNReLU2d
from hatcli.quant import DeQuantStub, QuantStub, qconfig_manager

class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.Hardswish()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        return self.head(x.mean((2, 3)))

class Branchy(Plain):
    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        if x.mean() > 0:
            x = x * 2
        return self.head(x.mean((2, 3)))

class Hat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.features = ConvBNReLU2d(1, 8, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.head(self.features(self.quant(x))))

    def fuse_model(self):
        self.features.fuse_model()

    def set_qconfig(self):
        self.qconfig = qconfig_manager.get_default_qat_qconfig()
        self.head.qconfig = qconfig_manager.get_default_qat_out_qconfig()

class Refuses(Plain):
    def __init__(self):
        from hatcli.quant import QuantizationError
        raise QuantizationError("head: no integer form")

@hatcli.hookimpl
def hat_register_models(register):
    for cls in (Plain, Branchy, Hat, Refuses):
        register(cls.__name__, cls, {"type": "object", "additionalProperties": False})
"""

SPEC = """\
version: 1
name: f2q
model: {type: MODEL}
data:
  train: {type: Digits, split: train, batch_size: 64}
stages:
  qat:
    model_convert_pipeline:
      qat_mode: with_bn
QCONFIG
      converters:
        - CONVERTER
    optimizer: {type: SGD, lr: 0.01}
    num_steps: 1
"""


@pytest.fixture
def build(plugin, tmp_path: Path):  # type: ignore[no-untyped-def]
    module = types.ModuleType("f2q_plugin")
    exec(PLUGIN, module.__dict__)
    plugin(module, "f2q_plugin")

    def run(model: str, converter: str = "{type: Float2QAT}", qconfig: str = ""):  # type: ignore[no-untyped-def]
        path = tmp_path / "spec.yaml"
        text = SPEC.replace("MODEL", model).replace("CONVERTER", converter)
        path.write_text(text.replace("QCONFIG\n", qconfig))
        return hatcli.build_model(hatcli.load_spec(path), "qat")

    return run


def test_a_plain_model_is_traced_and_a_hat_model_is_eager(build) -> None:  # type: ignore[no-untyped-def]
    plain = build("Plain")
    assert isinstance(plain.get_submodule("stem"), qat.ConvBN2d)  # with_bn: BN kept
    assert plain.get_submodule("stem").has_bn
    assert {r.name: r.runs_as for r in records(plain)}["act"] == "table lookup"
    hat_model = build("Hat")
    assert isinstance(hat_model.features, qat.ConvBNReLU2d)
    assert records(hat_model) == []  # eager: no trace records on the model
    traced = build("Hat", "{type: Float2QAT, mode: graph}")
    assert isinstance(traced.get_submodule("features"), qat.ConvBNReLU2d)
    assert traced.get_submodule("head.1").activation_post_process is None  # its set_qconfig


def test_spec_qconfig_applies_in_both_modes(build) -> None:  # type: ignore[no-untyped-def]
    qconfig = "      qconfig: {modules: {head: float}, types: {Hardswish: float}}\n"
    plain = build("Plain", qconfig=qconfig)
    islands = {r.name for r in records(plain) if r.runs_as == "float island"}
    assert islands == {"head", "act"}
    qconfig = "      qconfig: {modules: {head.1: int8}}\n"
    hat_model = build("Hat", qconfig=qconfig)
    assert hat_model.head[1].activation_post_process is not None  # over its set_qconfig


def test_untraceable_code_is_located_and_the_fix_named(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(hatcli.InputError) as caught:
        build("Branchy")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'spec.yaml'}:11:")  # the converter's line
    assert "Float2QAT: cannot trace <model> (Branchy) at <string>:22: " in message
    assert "cannot be used as inputs to control flow" in message
    assert len(message.splitlines()) == 1


def test_a_leaf_that_is_not_in_the_model_is_located(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(hatcli.InputError, match=r"spec.yaml:11:\d+: .*has no module 'stemm'"):
        build("Plain", "{type: Float2QAT, leaf_modules: [stemm]}")


@pytest.mark.parametrize(
    ("qconfig", "fragment"),
    [
        (
            "{modules: {stm: float}}",
            r"qconfig.modules.stm: matches no module of the model; did you mean 'stem'\?",
        ),
        ("{modules: {head: {percentile: 0}}}", r"percentile"),
    ],
)
def test_qconfig_mistakes_are_located(build, qconfig: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(hatcli.InputError, match=fragment) as caught:
        build("Plain", qconfig=f"      qconfig: {qconfig}\n")
    assert "spec.yaml:" in str(caught.value)


def test_an_eager_float_part_with_int8_input_is_named_when_the_integer_model_runs(build) -> None:  # type: ignore[no-untyped-def]
    """Eager preparation places no stubs: a conv a rule keeps float between quantized ops
    would get int8 tensors. The log lists it; the integer model names it, and the fix."""
    model = build("Hat", qconfig="      qconfig: {modules: {features: float}}\n")
    ops = {r.name: r for r in eager_records(model)}
    assert ops["features"].runs_as == "float island"
    assert "head.1" in ops and "features.conv" not in ops
    integer = convert(model.eval())
    with pytest.raises(QuantizationError) as caught:
        integer(torch.randn(2, 1, 8, 8))
    assert isinstance(caught.value, hatcli.InputError)  # one line, exit status 2
    assert str(caught.value).startswith(
        "features (ConvBNReLU2d) is kept float but gets a quantized input: "
    )
    assert "Float2QAT mode: graph" in str(caught.value)


def test_a_float_part_after_the_models_own_dequant_stub_still_runs() -> None:
    class TailKeptFloat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.features = ConvBNReLU2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.dequant(self.features(self.quant(x)))
            return self.head(x.flatten(1))

    model = TailKeptFloat()
    model.features.fuse_model()
    model.qconfig = qconfig_manager.get_default_qat_qconfig()
    model.head.qconfig = None
    qat_model = prepare_qat(model.train(), "fuse_bn")
    qat_model(torch.randn(4, 1, 8, 8))  # observers see data
    x = torch.randn(2, 1, 8, 8)
    out = convert(qat_model.eval())(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert [r.name for r in eager_records(qat_model) if r.runs_as == "float island"] == ["head"]


def test_a_float_container_holding_quantized_ops_is_not_refused() -> None:
    """A part kept float that still holds quantized modules (its own DeQuantStub, or a
    conv given a qconfig of its own) runs as before: only wholly float parts are checked."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dequant, self.fc = DeQuantStub(), nn.Linear(4 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.dequant(x).flatten(1))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant, self.stem, self.head = QuantStub(), ConvBNReLU2d(1, 4, 3, padding=1), Head()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(self.quant(x)))

    model = Model()
    model.stem.fuse_model()
    model.qconfig = qconfig_manager.get_default_qat_qconfig()
    model.head.qconfig = None
    model.head.dequant.qconfig = model.qconfig
    qat_model = prepare_qat(model.train(), "fuse_bn")
    qat_model(torch.randn(4, 1, 8, 8))
    integer = convert(qat_model.eval())
    assert integer(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert not integer.head._forward_pre_hooks  # holds a quantized op: not checked
    assert len(integer.head.fc._forward_pre_hooks) == 1  # wholly float: checked


def test_a_quantization_error_from_a_model_factory_is_located(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        hatcli.InputError, match=r"spec\.yaml:3:\d+: .*Refuses: head: no integer form"
    ):
        build("Refuses")
