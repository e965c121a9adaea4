"""hatcli.nn.quantizable.QuantizableModel: HAT's fuse_model/set_qconfig written once, giving
the model zoo exactly what each model's own two methods gave."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator

import pytest
import torch
from hat_models.digits_net import DigitsNet
from hat_models.mobilenet_v2 import MobileNetV2
from hat_models.resnet import ResNet18
from torch import nn

from hatcli.nn import ConvBNReLU2d, fuse_children
from hatcli.nn.quantizable import QuantizableModel
from hatcli.quant import (
    DeQuantStub,
    QuantStub,
    get_qat_mode,
    prepare_qat,
    qconfig_manager,
    set_qat_mode,
)

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "DigitsNet": (DigitsNet, (4, 1, 8, 8)),
    "ResNet18": (lambda: ResNet18(width=8), (2, 3, 32, 32)),
    "MobileNetV2": (lambda: MobileNetV2(width_mult=0.25), (2, 3, 32, 32)),
}


@pytest.fixture(autouse=True)
def _keep_qat_mode() -> Iterator[None]:
    mode = get_qat_mode()
    yield
    set_qat_mode(mode)


def as_the_models_did(model: nn.Module) -> None:
    """The fuse_model() and set_qconfig() each zoo model had before QuantizableModel."""
    fuse_children(model)
    model.qconfig = qconfig_manager.get_default_qat_qconfig()
    model.classifier.qconfig = qconfig_manager.get_default_qat_out_qconfig()


@pytest.mark.parametrize("mode", ["fuse_bn", "with_bn_reverse_fold"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
def test_zoo_models_convert_bit_for_bit_as_before(name: str, mode: str) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    before = copy.deepcopy(model)
    set_qat_mode(mode)
    model.fuse_model()
    model.set_qconfig()
    as_the_models_did(before)
    model, before = prepare_qat(model, mode, inplace=True), prepare_qat(before, mode, inplace=True)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for train in (True, False):  # observers see a batch, then the eval forward
        model.train(train)
        before.train(train)
        assert torch.equal(model(x), before(x))
    state, expected = model.state_dict(), before.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[key], expected[key]) for key in state)


class Net(QuantizableModel):
    output_layers = ("head.fc",)

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = ConvBNReLU2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(64, 3)))
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.head(self.conv(self.quant(x))))


def test_output_layers_by_dotted_name_get_the_output_qconfig() -> None:
    net = Net()
    net.set_qconfig()
    assert net.qconfig == qconfig_manager.get_default_qat_qconfig()
    assert net.head.fc.qconfig == qconfig_manager.get_default_qat_out_qconfig()
    assert not hasattr(net.conv, "qconfig")  # the rest inherits it when QAT is prepared
