"""The three qat_modes inside the QAT conv-BN modules, and absorbing BN mid-QAT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.nn.intrinsic.qat as aoqat
from hat_models.digits_net import DigitsNet
from quant_fixtures import qat_digits_net
from torch import nn
from torch.ao.quantization import FakeQuantize as AOFakeQuantize
from torch.ao.quantization import QConfig as AOQConfig
from torch.ao.quantization.observer import MovingAveragePerChannelMinMaxObserver

from hatcli.nn import ConvBN2d
from hatcli.quant import absorb_bn, convert, get_default_qat_qconfig, prepare_qat, set_qat_mode
from hatcli.quant.legacy import with_absorbed_flags
from hatcli.quant.nn import qat
from hatcli.quant.qat_tensor import QATTensor


def _float_block(seed: int = 0) -> ConvBN2d:
    torch.manual_seed(seed)
    block = ConvBN2d(4, 6, 3, padding=1)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.uniform_(-1.5, 1.5)  # negative gammas too
        block.bn.bias.uniform_(-0.3, 0.3)
    return block


def _peer(block: ConvBN2d) -> aoqat.ConvBn2d:
    wfq = AOFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    qconfig = AOQConfig(activation=nn.Identity, weight=wfq)
    peer = aoqat.ConvBn2d(4, 6, 3, padding=1, bias=False, qconfig=qconfig)
    peer.weight = block.conv.weight
    peer.bn = block.bn
    return peer


def test_reverse_fold_matches_torch_ao_conv_bn() -> None:
    set_qat_mode("with_bn_reverse_fold")
    block = _float_block()
    ours = qat.ConvBN2d.from_float(block, get_default_qat_qconfig())
    ours.activation_post_process = None  # compare the conv-BN part
    peer = _peer(copy.deepcopy(block))
    peer.weight = copy.deepcopy(ours.conv.weight)
    peer.bn = copy.deepcopy(ours.bn)
    x = torch.randn(8, 4, 7, 7)
    # training: BN on batch statistics, identical forward and gradients
    y_ours, y_peer = ours(x), peer(x)
    assert torch.allclose(y_ours, y_peer, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_fake_quant.scale, peer.weight_fake_quant.scale)
    # A weighted sum, not a square: BN's backward would cancel most of the latter's
    # gradient, leaving float32 rounding as the largest part of it.
    weights = torch.randn(y_peer.shape, generator=torch.Generator().manual_seed(1))
    (y_ours * weights).sum().backward()
    (y_peer * weights).sum().backward()
    for mine, theirs in ((ours.conv.weight, peer.weight), (ours.bn.weight, peer.bn.weight)):
        atol = 1e-6 * theirs.grad.abs().max()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=atol)
    # eval on a plain (unquantized) input: same function, computed in folded form
    # (torch.ao observes in eval too; ours does not, so freeze the peer's observer)
    ours.eval()
    peer.eval()
    peer.weight_fake_quant.disable_observer()
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def _fq_input(x: torch.Tensor, scale: float) -> QATTensor:
    zp = torch.zeros((), dtype=torch.int32)
    s = torch.tensor(scale)
    return QATTensor.wrap(torch.fake_quantize_per_tensor_affine(x, s, zp, -128, 127), s)


def _trained(mode: str, steps: int = 5) -> qat.ConvBNReLU2d:
    set_qat_mode(mode)
    torch.manual_seed(0)
    from hatcli.nn import ConvBNReLU2d

    block = ConvBNReLU2d(4, 6, 3, padding=1)
    m = qat.ConvBNReLU2d.from_float(block, get_default_qat_qconfig())
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(steps):
        loss = m(_fq_input(torch.randn(16, 4, 6, 6), 0.03)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_reverse_fold_absorbing_bn_keeps_eval_output() -> None:
    m = _trained("with_bn_reverse_fold")
    x = _fq_input(torch.randn(64, 4, 6, 6), 0.03)
    before = m(x)
    params = {id(p) for p in m.conv.parameters()}
    mapping = m.fuse_norm()
    after = m(x)
    assert {id(p) for p in m.conv.parameters()} == params  # the same Parameter objects
    assert all(v is k for k, v in mapping.items() if v is not None)
    assert sum(v is None for v in mapping.values()) == 2  # gamma and beta dropped
    assert not m.has_bn
    step = (after - before).abs() / m.activation_post_process.scale
    assert step.max() <= 1.0 + 1e-4
    assert (step > 1e-4).float().mean() <= 1e-3


def test_with_bn_absorbing_changes_forward() -> None:
    m = _trained("with_bn")
    x = _fq_input(torch.randn(64, 4, 6, 6), 0.03)
    before = m(x)
    absorb_bn(m)
    after = m(x)
    assert (after - before).abs().max() > m.activation_post_process.scale


def test_fuse_bn_mode_folds_at_from_float_when_not_fused() -> None:
    block = _float_block().eval()
    m = qat.ConvBN2d.from_float(block, get_default_qat_qconfig())
    assert not m.has_bn and isinstance(block.bn, nn.BatchNorm2d)  # float model untouched
    assert m.conv.weight is not block.conv.weight


def _fresh_qat_digits_net(mode: str) -> nn.Module:
    model = DigitsNet()
    model.fuse_model()
    model.set_qconfig()
    return prepare_qat(model, mode).eval()


@pytest.mark.parametrize("mode", ["with_bn", "with_bn_reverse_fold"])
def test_absorbed_bn_is_the_modules_own_state_and_loads_back(mode: str) -> None:
    trained = qat_digits_net(mode)
    absorb_bn(trained.block_conv1)
    state = trained.state_dict()
    assert bool(state["block_conv1._extra_state"]) and not bool(state["stem._extra_state"])
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = _fresh_qat_digits_net(mode)
    fresh.load_state_dict(state)  # absorbs block_conv1's BN before its weights load
    assert fresh.block_conv1.bn_absorbed and not fresh.block_conv1.has_bn
    assert fresh.stem.has_bn and not fresh.stem.bn_absorbed
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))
        assert torch.equal(convert(fresh)(x), convert(trained)(x))


def test_a_state_dict_of_hat_0_1_loads_with_its_absorbed_bn_list() -> None:
    """hat 0.1 saved no extra state; its checkpoints list the absorbed sub-modules."""
    trained = qat_digits_net("with_bn_reverse_fold")
    absorb_bn(trained.block_conv1)
    absorb_bn(trained.block_conv2)
    old = {k: v for k, v in trained.state_dict().items() if not k.endswith("_extra_state")}
    fresh = _fresh_qat_digits_net("with_bn_reverse_fold")
    with pytest.raises(LookupError, match=r"'block3' absorbed, but the model \(DigitsNet\)"):
        with_absorbed_flags(fresh, old, ["block3"])
    fresh.load_state_dict(with_absorbed_flags(fresh, old, ["block_conv1", "block_conv2"]))
    assert [m.bn_absorbed for m in (fresh.stem, fresh.block_conv1, fresh.block_conv2)] == [
        False,
        True,
        True,
    ]
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))
    # "" names the model itself, so every block in it; today's state dicts pass as they are.
    everything = with_absorbed_flags(fresh, old, [""])
    assert all(bool(v) for k, v in everything.items() if k.endswith("_extra_state"))
    today = trained.state_dict()
    upgraded = with_absorbed_flags(fresh, today, ["stem"])
    assert upgraded.keys() == today.keys() and all(upgraded[k] is today[k] for k in today)


def test_bn_absorbed_here_cannot_be_undone_by_a_load() -> None:
    trained = qat_digits_net("with_bn")
    absorbed = _fresh_qat_digits_net("with_bn")
    absorb_bn(absorbed.stem)
    result = absorbed.load_state_dict(trained.state_dict(), strict=False)
    assert absorbed.stem.bn_absorbed
    assert "stem.bn.weight" in result.unexpected_keys


@pytest.mark.parametrize("mode", ["with_bn", "with_bn_reverse_fold"])
def test_absorb_mid_training_keeps_optimizer_working(mode: str) -> None:
    model = qat_digits_net(mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mapping = absorb_bn(model.block_conv1)
    assert mapping and not model.block_conv1.has_bn
    from hatcli.quant import update_optimizer_params

    update_optimizer_params(opt, mapping)
    before = model.block_conv1.conv.weight.detach().clone()
    model.train()
    model(torch.rand(8, 1, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(model.block_conv1.conv.weight, before)
    assert all(p.grad is not None for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("fake_quant", [True, False])
def test_reverse_fold_weight_equals_autograd_through_its_parts(fake_quant: bool) -> None:
    """``FQ(W * s) / s`` by its own backward equals autograd through the product, the
    fake quantization and the division, and observes ``W * s`` alike."""
    from hatcli.quant.nn.qat.conv_bn import _ReverseFoldWeight

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g).requires_grad_(True)
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])  # negative gammas too
    s = ((torch.rand(6, generator=g) + 0.5) * signs).requires_grad_(True)
    fused, parts = (get_default_qat_qconfig().weight() for _ in range(2))  # type: ignore[misc]
    for fq in (fused, parts):
        fq.enable_fake_quant(fake_quant)
    weights = torch.randn(w.shape, generator=g)
    ours = _ReverseFoldWeight.apply(w, s, fused)
    ref = parts(w * s.reshape(-1, 1, 1, 1)) / s.reshape(-1, 1, 1, 1)
    assert torch.equal(ours, ref)
    assert torch.equal(fused.scale, parts.scale)
    mine = torch.autograd.grad((ours * weights).sum(), [w, s])
    theirs = torch.autograd.grad((ref * weights).sum(), [w, s])
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-6, atol=1e-6)
    # d/ds is a difference of two sums (zero without fake quantization): float32
    # rounding is relative to the size of those sums.
    terms = (weights * w).abs().sum().detach() / s.abs().min().detach()
    torch.testing.assert_close(mine[1], theirs[1], rtol=1e-5, atol=1e-6 * terms)
    assert fake_quant == bool(theirs[1].abs().max() > 1e-3 * terms)


@pytest.mark.parametrize("mode", ["fuse_bn", "with_bn", "with_bn_reverse_fold"])
def test_a_bfloat16_block_trains_in_bfloat16(mode: str) -> None:
    from hatcli.nn import ConvBNReLU2d

    set_qat_mode(mode)
    block = ConvBNReLU2d(3, 4, 3, padding=1)
    m = qat.ConvBNReLU2d.from_float(block, get_default_qat_qconfig()).to(torch.bfloat16)
    y = m.train()(torch.randn(2, 3, 5, 5, dtype=torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and m.conv.weight.grad.dtype == torch.bfloat16
