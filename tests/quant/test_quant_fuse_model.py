"""fuse_model() on the base modules and on DigitsNet, in every qat_mode."""

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
from hatcli.quant import set_qat_mode

CONV_BLOCKS = [ConvBN2d, ConvBNReLU2d, ConvBNReLU62d, ConvBNAdd2d, ConvBNAddReLU2d]


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.3)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("cls", CONV_BLOCKS)
def test_fuse_bn_folds_bn_and_keeps_eval_output(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    block = cls(4, 8, 3, stride=1, padding=0).eval()
    _randomise_bn(block)
    x = torch.randn(5, 4, 8, 8)
    residual = torch.randn(5, 8, 6, 6)
    args = (x, residual) if cls in (ConvBNAdd2d, ConvBNAddReLU2d) else (x,)
    before = block(*args)
    weight = block.conv.weight
    block.fuse_model()
    after = block(*args)
    assert isinstance(block.bn, nn.Identity) and block.conv.bias is not None
    assert block.conv.weight is weight  # folded in place
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    block.fuse_model()  # idempotent
    assert torch.equal(block(*args), after)


@pytest.mark.parametrize("mode", ["with_bn", "with_bn_reverse_fold"])
def test_with_bn_modes_only_mark_fused(mode: str) -> None:
    set_qat_mode(mode)
    block = ConvBNReLU2d(3, 4, 3)
    block.fuse_model()
    assert block.fused and isinstance(block.bn, nn.BatchNorm2d) and block.conv.bias is None
    lin = LinearReLU(3, 4)
    lin.fuse_model()
    assert lin.fused


@pytest.mark.parametrize("mode", ["fuse_bn", "with_bn", "with_bn_reverse_fold"])
def test_digits_net_fuse_model_keeps_eval_output(mode: str, digits: tuple) -> None:
    set_qat_mode(mode)
    model = float_digits_net().eval()
    _randomise_bn(model)
    x = torch.cat([digits[0][:256], torch.rand(256, 1, 8, 8)])
    with torch.no_grad():
        before = model(x)
        model.fuse_model()
        after = model(x)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == (0 if mode == "fuse_bn" else 4)
