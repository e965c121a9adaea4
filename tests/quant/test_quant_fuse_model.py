"""fuse_model() on the base modules and on DigitsNet; BN folded (fuse_bn) or kept by the
QAT modules built from them, by the qat_mode they are given."""

from __future__ import annotations

import pytest
import torch
from quant_fixtures import float_digits_net
from torch import nn

from hatcli.nn import (
    ConvBN2d,
    ConvBNAdd2d,
    ConvBNAddReLU2d,
    ConvBNReLU2d,
    ConvBNReLU62d,
    LinearReLU,
)
from hatcli.quant import get_default_qat_qconfig, prepare_qat, set_qat_mode
from hatcli.quant.mappings import FLOAT_TO_QAT

CONV_BLOCKS = [ConvBN2d, ConvBNReLU2d, ConvBNReLU62d, ConvBNAdd2d, ConvBNAddReLU2d]
MODES = ["fuse_bn", "with_bn", "with_bn_reverse_fold"]


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.3)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("mode", MODES)
def test_fuse_model_leaves_the_float_block_as_it_is_whatever_the_global_mode(mode: str) -> None:
    set_qat_mode(mode)  # HAT's global: hatcli.nn does not read it
    block = ConvBNReLU2d(3, 4, 3)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.fuse_model()
    assert isinstance(block.bn, nn.BatchNorm2d) and block.conv.bias is None
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    lin = LinearReLU(3, 4)
    lin.fuse_model()
    assert isinstance(lin.act, nn.ReLU)


@pytest.mark.parametrize("cls", CONV_BLOCKS)
def test_fuse_bn_folds_bn_into_a_copy_of_the_conv_and_keeps_eval_output(
    cls: type[nn.Module],
) -> None:
    torch.manual_seed(0)
    block = cls(4, 8, 3, stride=1, padding=0).eval()
    _randomise_bn(block)
    block.fuse_model()
    x = torch.randn(5, 4, 8, 8)
    expected = block.bn(block.conv(x))
    q = FLOAT_TO_QAT[cls].from_float(block, get_default_qat_qconfig(), qat_mode="fuse_bn")
    assert not q.has_bn and q.conv.bias is not None
    assert isinstance(block.bn, nn.BatchNorm2d) and block.conv.bias is None  # float kept
    folded = q.conv(x)
    assert (folded - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("mode", ["with_bn", "with_bn_reverse_fold"])
def test_with_bn_modes_keep_bn_and_share_the_float_parameters(mode: str) -> None:
    block = ConvBNReLU2d(3, 4, 3)
    block.fuse_model()
    q = FLOAT_TO_QAT[ConvBNReLU2d].from_float(block, get_default_qat_qconfig(), qat_mode=mode)
    assert q.has_bn and q.bn is block.bn and q.conv.weight is block.conv.weight


@pytest.mark.parametrize("mode", MODES)
def test_digits_net_fuse_model_keeps_eval_output(mode: str, digits: tuple) -> None:
    model = float_digits_net().eval()
    _randomise_bn(model)
    x = torch.cat([digits[0][:256], torch.rand(256, 1, 8, 8)])
    with torch.no_grad():
        before = model(x)
        model.fuse_model()
        assert torch.equal(model(x), before)
    model.set_qconfig()
    q = prepare_qat(model, mode)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert n_bn == (0 if mode == "fuse_bn" else 4)
