"""Observers and FakeQuantize against torch's own kernels and torch.ao (as a peer only)."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import FakeQuantize as AOFakeQuantize
from torch.ao.quantization.observer import (
    MovingAverageMinMaxObserver as AOMovingAverage,
)
from torch.ao.quantization.observer import (
    MovingAveragePerChannelMinMaxObserver as AOPerChannel,
)

from hatcli.quant import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    get_default_qat_qconfig,
)
from hatcli.quant.qat_tensor import QATTensor


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit: ``torch.equal`` alone would let -0.0 pass for +0.0."""
    a, b = a.detach().contiguous(), b.detach().contiguous()
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _batches(n: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) for i in range(n)]


def test_per_tensor_scale_matches_torch_ao_moving_average() -> None:
    ours = MovingAverageMinMaxObserver()
    peer = AOMovingAverage(
        averaging_constant=0.01, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
    )
    for x in _batches(5, (8, 3, 4, 4)):
        ours(x)
        peer(x)
        assert torch.equal(ours.calculate_qparams()[0], peer.calculate_qparams()[0].reshape(()))
    # the first batch initialises, later ones move 1% of the way
    first = _batches(1, (8, 3, 4, 4))[0]
    assert ours.min_val != first.min()


def test_scale_formula_and_eps_clamp() -> None:
    obs = MovingAverageMinMaxObserver()
    obs(torch.tensor([-3.0, 1.0]))
    scale, zp = obs.calculate_qparams()
    assert scale.item() == pytest.approx(3.0 / 127.5) and zp.item() == 0
    obs = MovingAverageMinMaxObserver()
    obs(torch.zeros(4))
    assert obs.calculate_qparams()[0].item() == torch.finfo(torch.float32).eps


def test_per_channel_scale_matches_torch_ao() -> None:
    ours = PerChannelMinMaxObserver(ch_axis=0)
    peer = AOPerChannel(
        averaging_constant=1.0, ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    for w in _batches(3, (6, 4, 3, 3)):
        ours(w)
        peer(w)
        assert torch.equal(ours.calculate_qparams()[0], peer.calculate_qparams()[0])
        assert torch.equal(ours.calculate_qparams()[0], w.abs().amax(dim=(1, 2, 3)) / 127.5)


def test_fake_quantize_equals_torch_kernels() -> None:
    qc = get_default_qat_qconfig()
    act, wfq = qc.activation(), qc.weight()  # type: ignore[misc]
    x = torch.randn(4, 3, 5, 5) * 3
    w = torch.randn(6, 3, 3, 3)
    y, wq = act(x), wfq(w)
    zp = torch.zeros((), dtype=torch.int32)
    ref = torch.fake_quantize_per_tensor_affine(x, act.scale, zp, -128, 127)
    assert _same_bits(y, ref)
    # Values and straight-through gradients on a large tensor, many of them at or next to
    # rounding ties and range ends, with a scale whose reciprocal is inexact.
    act.eval()
    steps = torch.arange(-140 * 4, 140 * 4, dtype=torch.float32) / 4 * act.scale
    near = torch.cat([steps, torch.nextafter(steps, steps + 1), torch.nextafter(steps, steps - 1)])
    big = torch.cat([near, torch.randn(200_000) * 2]).requires_grad_(True)
    ours = act(big)
    (ours * torch.arange(big.numel())).sum().backward()
    mine = big.grad.clone()
    big.grad = None
    theirs = torch.fake_quantize_per_tensor_affine(big, act.scale, zp, -128, 127)
    (theirs * torch.arange(big.numel())).sum().backward()
    # Gradients: equal values (torch's ``grad * mask`` leaves -0.0 where ``where`` gives 0).
    assert _same_bits(ours, theirs) and torch.equal(mine, big.grad)
    assert isinstance(y, QATTensor) and torch.equal(y.q_scale, act.scale)
    zps = torch.zeros(6, dtype=torch.int32)
    assert _same_bits(wq, torch.fake_quantize_per_channel_affine(w, wfq.scale, zps, 0, -128, 127))


def test_per_channel_fake_quantize_equals_torch_kernel_at_ties() -> None:
    """Weights at, and one float either side of, every rounding tie and range end of
    their channel's grid: values and gradients equal torch's per-channel kernel's."""
    wfq = get_default_qat_qconfig().weight()  # type: ignore[misc]
    g = torch.Generator().manual_seed(1)
    channel_max = torch.rand(6, generator=g) * 3 + 0.1
    wfq(channel_max.reshape(6, 1) * torch.tensor([-1.0, 1.0]))  # fixes each channel's scale
    wfq.eval()
    scale = wfq.scale
    halves = torch.arange(-130 * 2, 130 * 2 + 1, dtype=torch.float32) / 2
    grid = halves.reshape(1, -1) * scale.reshape(-1, 1)
    w = torch.cat([grid, torch.nextafter(grid, grid + 1), torch.nextafter(grid, grid - 1)], 1)
    w = w.reshape(6, -1, 1, 1).requires_grad_(True)
    weights = torch.rand(w.shape, generator=g)
    ours = wfq(w)
    (ours * weights).sum().backward()
    mine, w.grad = w.grad.clone(), None
    zps = torch.zeros(6, dtype=torch.int32)
    theirs = torch.fake_quantize_per_channel_affine(w, scale, zps, 0, -128, 127)
    (theirs * weights).sum().backward()
    assert _same_bits(ours, theirs)
    assert torch.equal(mine, w.grad)
    assert (mine == 0).any() and (mine != 0).any()


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.ReLU6(), torch.nn.Identity()])
def test_activation_fused_into_fake_quantize_is_bitwise_the_unfused_pair(act) -> None:
    """Values, gradients and observed ranges of ``after_activation`` equal ``fq(act(z))``,
    at the activation's kinks (0, 6) and rounding ties too."""
    g = torch.Generator().manual_seed(3)
    ties = torch.tensor([0.0, -0.0, 6.0, 5.999, 6.001, 1e-9, -1e-9])
    fused, plain_fq = FakeQuantize(), FakeQuantize()
    for step in range(3):
        z = torch.cat([ties, torch.randn(5000, generator=g) * 4]).requires_grad_(True)
        z2 = z.detach().clone().requires_grad_(True)
        weights = torch.rand(z.numel(), generator=g)
        a = fused.after_activation(z, act)
        b = plain_fq(act(z2))
        (a * weights).sum().backward()
        (b * weights).sum().backward()
        assert _same_bits(a, b), step
        assert torch.equal(z.grad, z2.grad), step
        assert torch.equal(fused.scale, plain_fq.scale)
        assert isinstance(a, QATTensor) and torch.equal(a.q_scale, b.q_scale)


def test_the_grid_threshold_is_where_torch_rounding_leaves_the_grid() -> None:
    from hatcli.quant.fake_quantize import _first_rounding_above

    g = torch.Generator().manual_seed(0)
    reciprocals = torch.cat([torch.rand(300, generator=g) * 100, torch.rand(300, generator=g)])
    for r in reciprocals[reciprocals > 0]:
        z = torch.tensor(_first_rounding_above(float(r), 127))
        below = torch.nextafter(z, torch.tensor(0.0))
        assert torch.mul(z, r).round() > 127 and torch.mul(below, r).round() <= 127
    assert _first_rounding_above(1e-38, 127) == float("inf")  # nothing finite leaves


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.ReLU6()])
@pytest.mark.parametrize("observed_max", [2.5, 6.0, 10.0])
def test_fused_activation_at_every_boundary_of_its_gradient_mask(act, observed_max) -> None:
    """With the scale fixed (eval), values at and one float either side of the kinks (0,
    6), the rounding ties and the ends of the int8 range give the unfused pair's values
    and gradients. A range beyond 6 (as a loaded checkpoint may hold) puts ReLU6's top
    below the int8 maximum."""
    fused, plain_fq = FakeQuantize(), FakeQuantize()
    for fq in (fused, plain_fq):
        fq(torch.tensor([-observed_max, observed_max]))
        fq.eval()
    scale = fused.scale
    levels = torch.arange(-130.0, 131.0)
    centres = torch.cat([levels * scale, (levels + 0.5) * scale, torch.tensor([0.0, 6.0])])
    z = torch.cat([centres, torch.nextafter(centres, centres + 1)])
    z = torch.cat([z, torch.nextafter(centres, centres - 1)]).requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    weights = torch.rand(z.numel(), generator=torch.Generator().manual_seed(0))
    a, b = fused.after_activation(z, act), plain_fq(act(z2))
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert _same_bits(a, b)
    assert torch.equal(z.grad, z2.grad)
    inside = z.grad != 0
    assert inside.any() and not inside.all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_fake_quantization_is_torchs_kernel(dtype: torch.dtype) -> None:
    """Below float32 the fake quantization is torch's own kernel (which computes in
    float32), per tensor and per channel, and keeps the dtype."""
    qc = get_default_qat_qconfig()
    act, wfq = qc.activation(), qc.weight()  # type: ignore[misc]
    x = (torch.randn(4, 3, 5, 5) * 3).to(dtype)
    w = torch.randn(6, 3, 3, 3).to(dtype)
    y, wq = act(x), wfq(w)
    assert y.dtype == dtype and wq.dtype == dtype
    zp = torch.zeros((), dtype=torch.int32)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, act.scale, zp, -128, 127))
    zps = torch.zeros(6, dtype=torch.int32)
    ref = torch.fake_quantize_per_channel_affine(w, wfq.scale, zps, 0, -128, 127)
    assert torch.equal(wq, ref)


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.ReLU6()])
def test_fused_activation_survives_non_finite_activations(act) -> None:
    """An inf or NaN in training (a diverging run) gives what the unfused pair gives for
    the finite values and never an exception from the fused arithmetic."""
    for bad in (float("inf"), float("nan")):
        fq = FakeQuantize()
        z = torch.tensor([0.5, -1.0, 2.0, bad]).requires_grad_(True)
        out = fq.after_activation(z, act)
        out.sum().backward()
        assert out.shape == z.shape and z.grad is not None


def test_an_unsigned_range_is_not_fused() -> None:
    """With 0 off the grid (``quant_min > 0``) the pair runs unfused, as written."""
    fused, plain_fq = FakeQuantize(), FakeQuantize()
    for fq in (fused, plain_fq):
        fq.quant_min, fq.quant_max = 1, 127
    z = torch.linspace(-1, 3, 401).requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    fused.after_activation(z, torch.nn.ReLU()).sum().backward()
    plain_fq(torch.relu(z2)).sum().backward()
    assert torch.equal(z.grad, z2.grad)


def test_fake_quantize_matches_torch_ao_fake_quantize_over_training() -> None:
    ours = FakeQuantize()
    peer = AOFakeQuantize(
        observer=AOMovingAverage,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    )
    for x in _batches(4, (16, 8)):
        assert torch.equal(ours(x), peer(x))


def test_rounds_half_to_even_and_straight_through_gradient() -> None:
    fq = FakeQuantize()
    fq(torch.tensor([-127.5, 127.5]))  # scale 1.0
    fq.eval()
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 126.9, 130.0, -140.0], requires_grad=True)
    y = fq(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, 127.0, -128.0]
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [1, 1, 1, 1, 1, 0, 0]


def test_observer_updates_only_in_training_and_when_enabled() -> None:
    fq = FakeQuantize()
    fq(torch.tensor([1.0]))
    fq.eval()
    fq(torch.tensor([100.0]))
    assert fq.activation_post_process.max_val.item() == 1.0
    fq.train()
    fq.disable_observer()
    fq(torch.tensor([100.0]))
    assert fq.activation_post_process.max_val.item() == 1.0
    fq.enable_observer()
    fq(torch.tensor([101.0]))
    assert fq.activation_post_process.max_val.item() == pytest.approx(2.0)


def test_flags_and_per_channel_state_survive_state_dict() -> None:
    fq = get_default_qat_qconfig().weight()  # type: ignore[misc]
    fq(torch.randn(5, 2, 3, 3))
    fq.disable_fake_quant()
    fresh = get_default_qat_qconfig().weight()  # type: ignore[misc]
    fresh.load_state_dict(fq.state_dict())
    assert not bool(fresh.fake_quant_enabled) and bool(fresh.observer_enabled)
    assert torch.equal(fresh.scale, fq.scale) and fresh.scale.shape == (5,)
    x = torch.randn(3)
    assert fresh(x) is x


def test_qat_tensor_keeps_scale_through_shape_ops_only() -> None:
    fq = FakeQuantize()
    y = fq(torch.randn(2, 3, 4, 4))
    assert isinstance(y.flatten(1), QATTensor) and torch.equal(y.flatten(1).q_scale, fq.scale)
    assert not isinstance(y * 2, QATTensor)
