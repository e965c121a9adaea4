"""Graph-mode preparation of plain PyTorch models: names, fusion, qconfig rules, leaves,
tracing errors, and QAT eval equal to the integer model in every qat_mode."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant import QATTensor, convert, prepare_qat
from hatcli.quant.absorb_bn import absorb_bn
from hatcli.quant.graph import TraceFailure, prepare, records
from hatcli.quant.nn import qat, quantized
from hatcli.quant.observer import FixedScaleObserver, PercentileObserver
from hatcli.quant.qconfig import get_default_qat_qconfig
from hatcli.quant.qconfig_spec import QConfigSpecError

MODES = ["fuse_bn", "with_bn", "with_bn_reverse_fold"]


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield


class Block(nn.Module):
    """A residual block as the ResNet family writes it: one ReLU module called twice,
    ``out += identity``, a downsample computed after the main branch."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 16, 2))
        self.head = nn.Sequential(nn.Linear(16, 16), nn.ReLU6())
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = F.dropout(x, 0.2, self.training)
        return self.fc(self.head(x) * 0.5 + 1)


def _train(model: nn.Module, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        loss = model(torch.randn(8, 3, 16, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _integer_equals_qat_eval(model: nn.Module) -> None:
    model.eval()
    integer = convert(copy.deepcopy(model))
    for _ in range(3):
        x = torch.randn(8, 3, 16, 16) * 2
        with torch.no_grad():
            assert torch.equal(model(x), integer(x))


@pytest.mark.parametrize("mode", MODES)
def test_qat_eval_equals_the_integer_model_in_every_mode(mode: str) -> None:
    qat_model = prepare(Net(), mode)
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)


def test_names_are_the_models_and_chains_are_fused() -> None:
    qat_model = prepare(Net(), "with_bn")
    names = dict(qat_model.named_modules())
    assert isinstance(names["stem.0"], qat.ConvBNReLU2d)
    assert isinstance(names["layer1.0.conv1"], qat.ConvBNReLU2d)
    assert isinstance(names["layer1.0.conv2"], qat.ConvBNAddReLU2d)
    assert isinstance(names["layer1.1.downsample.0"], qat.ConvBN2d)
    assert isinstance(names["head.0"], qat.Linear)  # linear + ReLU6, one output scale
    assert isinstance(names["fc"], qat.Linear)
    assert "layer1.0.bn1" not in names and "layer1.0.relu" not in names
    assert names["fc"].activation_post_process is None  # feeds the output: int32
    ops = {r.name: r for r in records(qat_model)}
    assert ops["fc"].runs_as == "int32 out"
    assert ops["layer1.0.conv2"].runs_as == "int8"
    assert any(r.runs_as == "table lookup" and r.type == "add" for r in ops.values())


def test_state_dict_keys_are_the_same_in_every_run_and_load_strictly() -> None:
    first, second = prepare(Net(), "fuse_bn"), prepare(Net(), "fuse_bn")
    _train(first, 1)
    assert list(first.state_dict()) == list(second.state_dict())
    second.load_state_dict(first.state_dict())  # strict
    first.eval()
    second.eval()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(first(x), second(x))


def test_the_float_model_is_left_as_it_was() -> None:
    model = Net()
    before = copy.deepcopy(model.state_dict())
    prepare(model, "fuse_bn")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d)


def test_bn_is_absorbed_by_dotted_name_losslessly_under_reverse_fold() -> None:
    qat_model = prepare(Net(), "with_bn_reverse_fold")
    _train(qat_model)
    qat_model.eval()
    x = torch.randn(4, 3, 16, 16)
    before = qat_model(x)
    absorb_bn(qat_model.get_submodule("layer1.0.conv1"))
    assert not qat_model.get_submodule("layer1.0.conv1").has_bn
    assert torch.equal(before, qat_model(x))


class Branchy(nn.Module):
    """Data-dependent control flow: cannot be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


class EagerPart(nn.Module):
    """A HAT-style block with fuse_model/set_qconfig, and untraceable code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(x.shape[0] > 0)):
            x = self.relu(self.conv(x))
        return x

    def fuse_model(self) -> None:
        pass


class WithBranch(nn.Module):
    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.part = part
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.part(F.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def test_an_untraceable_module_is_named_with_its_line() -> None:
    with pytest.raises(TraceFailure) as caught:
        prepare(WithBranch(Branchy()), "fuse_bn")
    message = str(caught.value)
    assert caught.value.module == "part"
    assert message.startswith("cannot trace part (Branchy) at ")
    assert f"{__file__}:" in message


def test_a_leaf_without_fuse_model_stays_float_and_qat_still_equals_integer() -> None:
    qat_model = prepare(WithBranch(Branchy()), "fuse_bn", leaf_modules=["part"])
    ops = {r.name: r for r in records(qat_model)}
    assert ops["part"].runs_as == "float island"
    assert isinstance(qat_model.get_submodule("part.conv"), nn.Conv2d)
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)
    integer = convert(copy.deepcopy(qat_model))
    assert isinstance(integer.get_submodule("part.conv"), nn.Conv2d)  # still float


def test_a_leaf_with_fuse_model_is_quantized_by_eager_rules() -> None:
    qat_model = prepare(WithBranch(EagerPart()), "fuse_bn", leaf_modules=["part"])
    assert isinstance(qat_model.get_submodule("part.conv"), qat.Conv2d)
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)


def test_qconfig_rules_exact_glob_enclosing_and_type() -> None:
    spec = {
        "modules": {
            "fc": "int8",
            "layer1.1.*": {"activation_observer": "percentile", "percentile": 99.0},
            "layer1.0": "float",
        },
        "types": {"ReLU6": "float"},
    }
    qat_model = prepare(Net(), "fuse_bn", qconfig=spec)
    ops = {r.name: r for r in records(qat_model)}
    assert qat_model.get_submodule("fc").activation_post_process is not None  # int8, not int32
    conv = qat_model.get_submodule("layer1.1.conv1")
    assert isinstance(conv.activation_post_process.activation_post_process, PercentileObserver)
    assert ops["layer1.0.conv1"].runs_as == "float island"
    assert not isinstance(qat_model.get_submodule("layer1.0.conv1"), qat.Conv2d)
    assert ops["layer1.0.conv2"].runs_as == "float island"  # with its residual add
    assert ops["head.1"].runs_as == "float island"  # by type: the ReLU6 is not fused
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)


def test_a_fixed_input_scale_is_kept() -> None:
    qat_model = prepare(Net(), "fuse_bn", qconfig={"modules": {"x_quant": {"fixed_scale": 0.03}}})
    stub = qat_model.get_submodule("x_quant")
    assert isinstance(stub.activation_post_process.activation_post_process, FixedScaleObserver)
    _train(qat_model)
    assert float(stub.activation_post_process.scale) == pytest.approx(0.03)
    integer = convert(copy.deepcopy(qat_model))
    assert float(integer.get_submodule("x_quant").scale) == pytest.approx(0.03)


def test_a_pattern_that_matches_nothing_says_what_was_meant() -> None:
    hint = r"matches no module of the model; did you mean 'layer1.0.conv[12]'\?"
    with pytest.raises(QConfigSpecError, match=hint):
        prepare(Net(), "fuse_bn", qconfig={"modules": {"layer1.0.conv": "float"}})
    with pytest.raises(QConfigSpecError) as caught:
        prepare(Net(), "fuse_bn", qconfig={"default": "int4"})
    assert caught.value.path == ("default",)


class OwnQConfig(Net):
    """Sets qconfigs itself (HAT's set_qconfig) and is still traced."""

    def set_qconfig(self) -> None:
        self.qconfig = get_default_qat_qconfig()
        self.head.qconfig = None


def test_a_models_own_set_qconfig_applies_and_the_spec_overrides_it() -> None:
    ops = {r.name: r for r in records(prepare(OwnQConfig(), "fuse_bn"))}
    assert ops["head.0"].runs_as == "float island"
    assert ops["fc"].qconfig == "model's set_qconfig"
    spec = {"modules": {"head": "int8"}}
    ops = {r.name: r for r in records(prepare(OwnQConfig(), "fuse_bn", qconfig=spec))}
    assert ops["head.0"].runs_as == "int8"


class Islands(nn.Module):
    """Ops with no integer form: softmax over channels, a float LayerNorm, division of
    two tensors; and shapes read at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        n, c, h, w = y.size()
        z = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z = torch.softmax(z, dim=1) + y / (y.abs() + 1)
        return z.reshape(n, c, h * w).mean(-1)


def test_float_islands_are_listed_and_simulated_exactly() -> None:
    qat_model = prepare(Islands(), "fuse_bn")
    islands = {r.type for r in records(qat_model) if r.runs_as == "float island"}
    assert islands == {"LayerNorm", "softmax", "truediv", "abs"}
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)


def test_qat_outputs_carry_scales_between_graph_ops() -> None:
    qat_model = prepare(Net(), "fuse_bn").eval()
    seen: list[bool] = []
    hook = qat_model.get_submodule("layer1.0.conv2").register_forward_hook(
        lambda m, args, out: seen.append(isinstance(args[1], QATTensor))
    )
    qat_model(torch.randn(2, 3, 16, 16))
    hook.remove()
    assert seen == [True]  # the residual arrives quantized


def test_eager_preparation_is_unchanged_for_a_model_with_hats_methods() -> None:
    from hat_models.digits_net import DigitsNet

    model = DigitsNet(num_classes=10, width=8)
    model.fuse_model()
    model.set_qconfig()
    eager = prepare_qat(model, "fuse_bn")
    assert not isinstance(eager, torch.fx.GraphModule)
    assert any(isinstance(m, quantized.Conv2d) for m in convert(eager).modules())


def test_the_integer_model_traces_with_shapes_read_at_run_time() -> None:
    """``y.size()`` and ``x.shape`` on integer activations under torch.jit.trace (sizes
    come back as tensors there), and the trace follows the batch size."""
    qat_model = prepare(Islands(), "fuse_bn")
    _train(qat_model, 1)
    integer = convert(copy.deepcopy(qat_model.eval()))
    traced = torch.jit.trace(integer, torch.randn(2, 3, 16, 16), check_trace=False)
    x = torch.randn(5, 3, 16, 16)
    assert torch.equal(traced(x), integer(x))


class ResidualOut(nn.Module):
    """A conv whose residual add is the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        return self.b(x) + x


def test_a_conv_add_at_the_output_keeps_an_int8_output() -> None:
    default = prepare(ResidualOut(), "fuse_bn")
    assert default.get_submodule("b").activation_post_process is not None
    qat_model = prepare(ResidualOut(), "fuse_bn", qconfig={"modules": {"b": "int8_out"}})
    assert isinstance(qat_model.get_submodule("b"), qat.ConvBNAdd2d)
    assert qat_model.get_submodule("b").activation_post_process is not None
    assert "needs an output scale" in {r.name: r for r in records(qat_model)}["b"].qconfig
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)


class TableOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)) * 2


def test_int8_out_on_an_op_without_an_int32_form_keeps_an_int8_output() -> None:
    qat_model = prepare(TableOut(), "fuse_bn", qconfig={"types": {"sigmoid": "int8_out"}})
    sigmoid = {r.name: r for r in records(qat_model)}["sigmoid"]
    assert sigmoid.runs_as == "table lookup"
    assert sigmoid.qconfig.endswith("int8 out: this op needs an output scale")
    _train(qat_model)
    _integer_equals_qat_eval(qat_model)
