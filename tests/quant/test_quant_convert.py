"""prepare_qat / convert on DigitsNet, and the integer model against QAT eval."""

from __future__ import annotations

import pytest
import torch
from hat_models.digits_net import DigitsNet
from quant_fixtures import float_digits_net, qat_digits_net
from torch import nn

from hatcli.nn import ConvBNReLU2d
from hatcli.quant import (
    QATMode,
    QTensor,
    QuantizationError,
    QuantStub,
    convert,
    float_simulation,
    get_default_qat_qconfig,
    get_qat_mode,
    prepare_qat,
    set_qat_mode,
)
from hatcli.quant.nn import qat, quantized
from hatcli.quant.nn.quantized.int_matmul import conv_weight_mats, int8_conv2d, int8_matmul
from hatcli.quant.nn.quantized.requantize import (
    FLOAT64_EXACT,
    quantize_multiplier,
    requantize,
)

MODES = ["fuse_bn", "with_bn", "with_bn_reverse_fold"]
LAYERS = ["quant", "stem", "block_conv1", "block_conv2", "down", "pool"]


def test_prepare_swaps_by_table_and_inherits_qconfig() -> None:
    model = float_digits_net()
    model.fuse_model()
    model.set_qconfig()
    q = prepare_qat(model, "fuse_bn")
    assert isinstance(q.quant, qat.QuantStub) and isinstance(q.stem, qat.ConvBNReLU2d)
    assert isinstance(q.block_conv2, qat.ConvBNAddReLU2d)
    assert isinstance(q.pool, qat.AdaptiveAvgPool2d)
    assert isinstance(q.classifier, qat.Linear) and q.classifier.activation_post_process is None
    assert q.stem.qconfig is q.qconfig  # inherited from the parent
    assert isinstance(model.stem, ConvBNReLU2d)  # not in place by default
    weight = model.stem.conv.weight
    q = prepare_qat(model, "with_bn", inplace=True)
    assert q is model and q.stem.conv.weight is weight  # shares the float Parameters


def test_the_model_carries_its_qat_mode_not_the_global() -> None:
    models = {}
    for mode in MODES:
        model = float_digits_net()
        model.fuse_model()
        model.set_qconfig()
        models[mode] = prepare_qat(model, mode)
    assert get_qat_mode() is QATMode.FuseBN  # prepare_qat leaves HAT's global alone
    for mode, q in models.items():
        assert q.stem.qat_mode is QATMode(mode)
        assert q.stem.has_bn == (mode != "fuse_bn")  # fuse_bn: BN folded at preparation
    set_qat_mode("with_bn_reverse_fold")  # HAT's API: the mode when none is given
    model = float_digits_net()
    model.fuse_model()
    model.set_qconfig()
    assert prepare_qat(model).stem.qat_mode is QATMode.WithBNReverseFold


def test_qconfig_none_keeps_float_and_unsupported_weights_name_their_path() -> None:
    model = nn.Sequential(QuantStub(), nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    model.qconfig = get_default_qat_qconfig()
    with pytest.raises(QuantizationError, match=r"^1\.1: BatchNorm2d holds weights"):
        prepare_qat(model)
    model[1][1].qconfig = None
    q = prepare_qat(model)
    assert isinstance(q[1][0], qat.Conv2d) and type(q[1][1]) is nn.BatchNorm2d


def _compare(q: nn.Module, i: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per quantized layer: |QAT float simulation - integer| in units of that layer's
    output scale."""
    outs: dict[tuple[str, str], torch.Tensor] = {}
    for tag, model in (("q", q), ("i", i)):
        for name in LAYERS:
            getattr(model, name).register_forward_hook(
                lambda m, a, o, key=(tag, name): outs.__setitem__(key, o)
            )
    with torch.no_grad(), float_simulation():
        yq, yi = q(x), i(x)
    steps = {
        n: (outs["q", n] - outs["i", n].dequantize()).abs() / outs["i", n].q_scale for n in LAYERS
    }
    # The classifier output is unquantized (int32); measure it in the scale an int8
    # output would have.
    steps["output"] = (yq - yi).abs() / (yq.abs().max() / 127.5)
    return steps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_integer_model_matches_qat_eval(mode: str, digits: tuple) -> None:
    """QAT eval is the integer model, bit for bit; the float simulation QAT trains with
    stays within one output scale on >= 99.9% of each layer's values, never beyond two."""
    q = qat_digits_net(mode)
    i = convert(q)
    assert isinstance(i.stem, quantized.Conv2d) and isinstance(i.block_conv2, quantized.ConvAdd2d)
    g = torch.Generator().manual_seed(2)
    inputs = {
        "digits": digits[0],
        "uniform": torch.rand(1024, 1, 8, 8, generator=g),
        "wide": torch.randn(1024, 1, 8, 8, generator=g) * 2,  # clips at the QuantStub
    }
    for kind, x in inputs.items():
        with torch.no_grad():
            assert torch.equal(q(x), i(x)), kind
        for layer, step in _compare(q, i, x).items():
            assert step.max() <= 2.0 + 1e-3, (kind, layer)
            assert (step > 1.0 + 1e-3).float().mean() <= 1e-3, (kind, layer)
    with torch.no_grad(), float_simulation():
        agree = (q(digits[0]).argmax(1) == i(digits[0]).argmax(1)).float().mean()
    assert agree >= 0.99


@pytest.mark.parametrize("mode", ["fuse_bn", "with_bn"])
def test_quantized_classifier_output_within_one_scale(mode: str) -> None:
    q = qat_digits_net(mode, out_qconfig=False)
    i = convert(q)
    x = torch.rand(1024, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(q(x), i(x))
        with float_simulation():
            step = (q(x) - i(x)).abs() / i.classifier.output_scale
    assert step.max() <= 2.0 + 1e-3 and (step > 1.0 + 1e-3).float().mean() <= 1e-3


def test_qat_eval_follows_weight_changes(digits: tuple) -> None:
    """The integer twin is rebuilt when a weight, BN statistic or scale changes."""
    q = qat_digits_net("with_bn")
    x = digits[0][:64]
    with torch.no_grad():
        before = q(x)
        q.stem.conv.weight.mul_(1.5)
        q.block_conv1.bn.running_var.mul_(2.0)
        after = q(x)
        assert not torch.equal(before, after)
        assert torch.equal(after, convert(q)(x))


def test_qat_eval_with_gradients_keeps_the_simulations_gradient(digits: tuple) -> None:
    """Eval outside no_grad: the integer model's values, the float simulation's gradient."""
    q = qat_digits_net("with_bn_reverse_fold")
    x = digits[0][:32]
    out = q(x)
    assert out.requires_grad and torch.equal(out.detach(), convert(q)(x))
    out.square().sum().backward()
    exact_grad = q.stem.conv.weight.grad.clone()
    q.zero_grad()
    with float_simulation():
        simulated = q(x)
    # The straight-through output differs in value only, so d(out)/d(w) is the simulation's;
    # the loss gradient differs through `out` itself.
    (2 * out.detach() * simulated).sum().backward()
    assert torch.equal(q.stem.conv.weight.grad, exact_grad)


def test_integer_results_identical_across_batch_sizes(digits: tuple) -> None:
    i = convert(qat_digits_net("with_bn"))
    x = digits[0][:200]
    with torch.no_grad():
        whole = i(x)
        parts = torch.cat([i(x[k : k + n]) for k, n in ((0, 1), (1, 63), (64, 136))])
        again = i(x)
    assert torch.equal(whole, parts) and torch.equal(whole, again)


def test_integer_model_is_integer_between_the_stubs() -> None:
    i = convert(qat_digits_net("fuse_bn"))
    seen: dict[str, torch.Tensor] = {}
    for name in [*LAYERS, "classifier"]:
        getattr(i, name).register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, o))
    with torch.no_grad():
        y = i(torch.rand(4, 1, 8, 8))
    assert y.dtype == torch.float32 and type(y) is torch.Tensor
    assert all(isinstance(o, QTensor) for o in seen.values())
    assert all(seen[n].dtype == torch.int8 for n in LAYERS)
    assert seen["classifier"].dtype == torch.int32 and seen["classifier"].q_axis == 1
    assert all(b.dtype in (torch.int8, torch.float32, torch.float64) for b in i.buffers())
    assert not list(i.parameters())


def test_integer_model_refuses_training() -> None:
    i = convert(qat_digits_net("fuse_bn"))
    with pytest.raises(RuntimeError, match="cannot be trained"):
        i.train()
    i.stem.training = True
    with pytest.raises(RuntimeError, match="cannot train"):
        i(torch.rand(2, 1, 8, 8))
    i.stem.training = False
    with pytest.raises(RuntimeError, match="cannot backpropagate"):
        i(torch.rand(2, 1, 8, 8, requires_grad=True))


def test_qtensor_refuses_float_ops() -> None:
    q = QTensor(torch.ones(2, 3, dtype=torch.int8), torch.tensor(0.5))
    with pytest.raises(TypeError, match="not supported on a QTensor"):
        torch.relu(q)
    assert q.flatten().q_scale == 0.5 and q.dequantize().tolist() == [[0.5] * 3] * 2


def test_int8_kernels_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (37, 300), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (300, 5), dtype=torch.int8, generator=g)
    assert torch.equal(int8_matmul(a, b).long(), a.long() @ b.long())
    x = torch.randint(-128, 128, (3, 4, 9, 7), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (6, 2, 3, 3), dtype=torch.int8, generator=g)
    for stride, pad, dil in (((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 2), (2, 1))):
        ref = nn.functional.conv2d(x.double(), w.double(), None, stride, pad, dil, groups=2)
        acc = int8_conv2d(x, conv_weight_mats(w, 2), (3, 3), stride, pad, dil)
        assert torch.equal(acc.permute(0, 3, 1, 2).double(), ref)


@pytest.mark.parametrize(("m", "k", "n"), [(50, 1, 2), (1, 7, 3), (5, 1, 1), (1, 1, 4), (9, 4, 1)])
def test_int8_matmul_is_exact_on_matrices_of_one_row_or_column(m: int, k: int, n: int) -> None:
    """A transposed column ([1, n] with strides (1, 1), as a grouped 1x1 conv of one
    input channel per group has for weights) is multiplied exactly too."""
    g = torch.Generator().manual_seed(m * k * n)
    a = torch.randint(-128, 128, (k, m), dtype=torch.int8, generator=g).t().contiguous()
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g).t().contiguous()
    assert torch.equal(int8_matmul(a, b).long(), a.long() @ b.long())
    x = torch.randint(-128, 128, (2, 4, 5, 5), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (8, 1, 1, 1), dtype=torch.int8, generator=g)  # 2 outs a group
    ref = nn.functional.conv2d(x.double(), w.double(), groups=4)
    acc = int8_conv2d(x, conv_weight_mats(w, 4), (1, 1), (1, 1), (0, 0), (1, 1))
    assert torch.equal(acc.permute(0, 3, 1, 2).double(), ref)


def test_requantize_rounds_half_to_even_on_both_paths() -> None:
    g = torch.Generator().manual_seed(0)
    factors = torch.rand(16, dtype=torch.float64, generator=g) * torch.logspace(-6, 1, 16)
    (m,), shift = quantize_multiplier(factors)
    assert (m.abs() < 2**31).all()
    assert ((m / 2.0 ** shift.double()) / factors - 1).abs().max() < 2**-30
    acc = torch.randint(-(2**20), 2**20, (100, 16), dtype=torch.int32, generator=g)
    exact = torch.round(acc.double() * m.double() / 2.0 ** shift.double()).clamp(-128, 127)
    assert torch.equal(requantize([(acc, m)], shift), exact.to(torch.int8))
    assert torch.equal(requantize([(acc, m)], shift, force_int64=True), exact.to(torch.int8))
    ties = torch.arange(-9, 10, dtype=torch.int32)  # x / 2: ties at every odd x
    one, s1 = torch.tensor(1), torch.tensor(1)
    expect = torch.round(ties / 2).to(torch.int8)
    assert torch.equal(requantize([(ties, one)], s1), expect)
    assert torch.equal(requantize([(ties, one)], s1, force_int64=True), expect)


def test_bounded_multipliers_keep_requantization_exact_in_float64() -> None:
    """Given bounds on the integers, the multipliers lose only the bits that would make
    float64 inexact; the float64 result then equals the int64 one at those bounds."""
    g = torch.Generator().manual_seed(1)
    bounds = torch.tensor([2**31, 2**28, 2**24, 2**20, 2**16, 2**12, 2**8, 128])
    # Accumulators up to the bound map onto the whole int8 range, as in a real layer.
    factors = (torch.rand(8, dtype=torch.float64, generator=g) * 0.5 + 0.5) * 127 / bounds
    (m,), shift = quantize_multiplier(factors, x_bounds=[bounds])
    assert (bounds.double() * m.abs().double() < FLOAT64_EXACT).all()
    assert (m.abs() >= 2**20).all() and (m.abs() >= 2**30)[-2:].all()  # full bits if room
    assert ((m / 2.0 ** shift.double()) / factors - 1).abs().max() < 2**-19
    acc = torch.cat([bounds.unsqueeze(0), -bounds.unsqueeze(0)])
    acc = torch.cat([acc, (torch.rand(64, 8, generator=g) * 2 - 1) * bounds]).to(torch.int64)
    bound = int((bounds.double() * m.abs().double()).max())
    fast = requantize([(acc, m)], shift, bound=bound)
    assert torch.equal(fast, requantize([(acc, m)], shift, force_int64=True))
    assert fast.unique().numel() > 150  # spread over the int8 range, not saturated


def test_convert_keeps_float_parts_without_qconfig() -> None:
    class WithLoss(DigitsNet):
        def __init__(self) -> None:
            super().__init__()
            self.loss = nn.Linear(10, 1)

        def set_qconfig(self) -> None:
            super().set_qconfig()
            self.loss.qconfig = None

    model = WithLoss()
    model.fuse_model()
    model.set_qconfig()
    i = convert(prepare_qat(model))
    assert type(i.loss) is nn.Linear and isinstance(i.classifier, quantized.Linear)


def test_qat_and_integer_state_dicts_round_trip() -> None:
    q = qat_digits_net("with_bn")
    model = float_digits_net()
    model.fuse_model()
    model.set_qconfig()
    fresh = prepare_qat(model, "with_bn").eval()
    fresh.load_state_dict(q.state_dict())
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
        i, j = convert(q), convert(fresh)
        before = j(x)
        j.load_state_dict(i.state_dict())
        assert torch.equal(j(x), i(x)) and torch.equal(before, i(x))


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_depthwise_fast_paths_equal_the_general_im2col_path(stride: int, dilation: int) -> None:
    from hatcli.quant.nn.quantized.int_matmul import (
        conv_weight_mats,
        depthwise_conv2d_float32,
        float32_convolution_is_exact,
        int8_conv2d,
        int8_depthwise_conv2d,
    )

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (3, 12, 9, 11), dtype=torch.int8, generator=generator)
    w = torch.randint(-128, 128, (12, 1, 3, 3), dtype=torch.int8, generator=generator)
    x[0], w[0] = -128, -128  # the extreme sum, 9 * 128 * 128
    geometry = ((stride, stride), (1, 1), (dilation, dilation))
    general = int8_conv2d(x, conv_weight_mats(w, 12), (3, 3), *geometry)
    assert torch.equal(int8_depthwise_conv2d(x, w, *geometry), general)
    assert float32_convolution_is_exact()  # on this CPU build; it guards the next line
    assert torch.equal(depthwise_conv2d_float32(x, w, *geometry), general.float())


def test_reduced_precision_settings_turn_the_float32_depthwise_path_off(monkeypatch) -> None:
    from hatcli.quant.nn.quantized.int_matmul import float32_convolution_is_exact

    assert float32_convolution_is_exact()
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    assert not float32_convolution_is_exact()
    monkeypatch.delenv("ONEDNN_DEFAULT_FPMATH_MODE")
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "bf16"
    try:
        assert not float32_convolution_is_exact()
    finally:
        conv.fp32_precision = before
