"""oneDNN's int8 kernels give the reference path's integers, bit for bit: the bracketed
requantization ("fused") and the float32 accumulator ("accumulator") against
``torch._int_mm`` on an im2col ("reference"), on every kind of layer; the self-test
decides, ``describe()`` says which path runs; the lookup tables of the small ops are
their elementwise requantization."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from hatcli.quant.nn.quantized import (
    AvgPool2d,
    Conv2d,
    ConvAdd2d,
    Elementwise,
    Linear,
    MaxPool2d,
    QFunctional,
    ReLU6,
    kernels,
)
from hatcli.quant.nn.quantized import conv as conv_module
from hatcli.quant.nn.quantized import linear as linear_module
from hatcli.quant.nn.quantized.requantize import requantize
from hatcli.quant.qtensor import QTensor

FAST = ["auto", "fused", "accumulator"]


@pytest.fixture
def onednn() -> None:
    """Skips where oneDNN's kernels are missing or failed their self-test (run here, not
    at collection)."""
    ok, why = kernels._onednn_status()
    if not ok:
        pytest.skip(f"oneDNN's int8 kernels are not exact here: {why}")


needs_onednn = pytest.mark.usefixtures("onednn")


@pytest.fixture(autouse=True)
def _every_layer_on_onednn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small test layers take oneDNN too; the automatic path is restored afterwards."""
    monkeypatch.setattr(conv_module, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)
    yield
    kernels.select(None)


def _conv(
    cin: int,
    cout: int,
    k: int,
    *,
    groups: int = 1,
    stride: int = 1,
    dilation: int = 1,
    clamp: tuple[int, int] = (-128, 127),
    int32_out: bool = False,
    weight: torch.Tensor | None = None,
    residual: bool = False,
    seed: int = 0,
) -> Conv2d:
    g = torch.Generator().manual_seed(seed)
    w = weight
    if w is None:
        w = torch.randint(-128, 128, (cout, cin // groups, k, k), generator=g, dtype=torch.int8)
    scale = torch.rand(cout, generator=g, dtype=torch.float64) * 0.01 + 0.001
    scale[::5] *= -1  # a negative BN scale makes a negative multiplier
    bias = torch.randn(cout, generator=g) * 0.3
    out = None if int32_out else torch.tensor(0.04)
    pad = (k // 2 * dilation, k // 2 * dilation)
    cls = ConvAdd2d if residual else Conv2d
    geometry = ((stride, stride), pad, (dilation, dilation), groups)
    return cls(w, scale, bias, out, *geometry, *clamp)


def _activation(shape: tuple[int, ...], seed: int, low: int = -128) -> QTensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, 128, shape, generator=g, dtype=torch.int8)
    q = QTensor(x.contiguous(memory_format=torch.channels_last), torch.tensor(0.02))
    return kernels.mark_nonnegative(q) if low >= 0 else q


def _on(path: str, module: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    kernels.select(path)
    with torch.no_grad():
        out = module(*args)
    return out.int_repr().clone()


LAYERS = {
    "dense 3x3": lambda: _conv(32, 48, 3),
    "1x1 relu": lambda: _conv(64, 32, 1, clamp=(0, 127)),
    "depthwise relu6": lambda: _conv(48, 48, 3, groups=48, clamp=(0, 40)),
    "grouped strided": lambda: _conv(32, 32, 3, groups=4, stride=2),
    "dilated": lambda: _conv(16, 24, 3, dilation=2, clamp=(0, 127)),
    "int32 output": lambda: _conv(32, 16, 3, int32_out=True),
    # uint8 accumulators up to 255 * 127 * 2304: past 2**24, so input-channel groups
    "input-channel split": lambda: _conv(
        256, 8, 3, int32_out=True, weight=torch.full((8, 256, 3, 3), 127, dtype=torch.int8)
    ),
    "split, int8 output": lambda: _conv(
        256, 8, 3, weight=torch.randint(100, 128, (8, 256, 3, 3), dtype=torch.int8)
    ),
}


@needs_onednn
@pytest.mark.parametrize("path", FAST)
@pytest.mark.parametrize("name", list(LAYERS))
def test_fast_paths_give_the_reference_integers_on_every_layer_kind(path: str, name: str) -> None:
    conv = LAYERS[name]()
    cin = conv.weight.shape[1] * conv.groups
    for x in (_activation((3, cin, 9, 10), 1), _activation((2, cin, 7, 7), 2, low=0)):
        assert torch.equal(_on(path, conv, x), _on("reference", conv, x)), (path, name)


@needs_onednn
def test_a_layer_past_the_float32_bound_runs_in_input_channel_groups() -> None:
    conv = LAYERS["input-channel split"]()
    packed = conv._packed_conv()
    assert len(packed.ranges or []) > 1  # 255 * 127 * 256 * 9 > 2**24
    for a, b in packed.ranges or []:
        assert 255 * 127 * 9 * (b - a) < 2**24
    x = _activation((2, 256, 5, 5), 3)
    exact = F.conv2d(x.int_repr().double(), conv.weight.double(), padding=1)
    got = _on("accumulator", conv, x).double() - conv.requant_params(0.02).bias.view(1, -1, 1, 1)
    assert torch.equal(got, exact)


@needs_onednn
@pytest.mark.parametrize("clamp", [(0, 127), (-128, 127), (0, 9)])
def test_residual_conv_equals_the_reference(clamp: tuple[int, int]) -> None:
    conv = _conv(24, 24, 3, clamp=clamp, residual=True)
    x = _activation((2, 24, 8, 8), 4, low=0)
    r = QTensor(_activation((2, 24, 8, 8), 5).int_repr(), torch.tensor(0.03))
    for path in FAST:
        assert torch.equal(_on(path, conv, x, r), _on("reference", conv, x, r)), path


@needs_onednn
def test_the_bracket_flags_rounding_ties_and_settles_them_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small integers and multipliers of 1/16 put many values exactly on ties: the two
    bracketing results differ there and the exact recomputation decides."""
    g = torch.Generator().manual_seed(6)
    w = torch.randint(-3, 4, (16, 16, 3, 3), generator=g, dtype=torch.int8)
    conv = Conv2d(w, torch.full((16,), 1.0, dtype=torch.float64), torch.zeros(16), None)
    conv.output_scale = torch.tensor(16.0 * 0.0625)  # M = s_in * s_w / s_out = 1/16
    x = QTensor(torch.randint(-3, 4, (2, 16, 8, 8), generator=g, dtype=torch.int8), 0.0625)
    settled = []
    original = kernels.mismatches

    def counted(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        at = original(lo, hi)
        settled.append(at.shape[0])
        return at

    monkeypatch.setattr(kernels, "mismatches", counted)
    assert torch.equal(_on("fused", conv, x), _on("reference", conv, x))
    assert settled and settled[0] > 10


@needs_onednn
def test_auto_measures_each_layer_once_per_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = _conv(32, 48, 3)
    measured = []
    original = Conv2d._measure

    def counted(self: Conv2d, key: tuple[object, ...], *args: object) -> str:
        measured.append(key)
        return original(self, key, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Conv2d, "_measure", counted)
    x, y = _activation((3, 32, 9, 10), 1), _activation((2, 32, 9, 10), 1)
    for _ in range(3):
        assert torch.equal(_on("auto", conv, x), _on("reference", conv, x))
    assert len(measured) == 1
    assert set(conv._fastest.values()) <= {"fused", "accumulator"}
    _on("auto", conv, y)
    assert len(measured) == 2  # another batch size: measured again


@needs_onednn
def test_auto_keeps_only_paths_that_give_the_reference_integers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At first use ``auto`` checks each oneDNN path against the reference: a path that
    differs is never chosen (here: one made wrong on purpose; below, a geometry oneDNN
    computes wrongly on torch 2.13)."""
    original = Conv2d._onednn_output

    def wrong_fused(self: Conv2d, path: str, *args: object) -> torch.Tensor | None:
        out = original(self, path, *args)  # type: ignore[arg-type]
        if path == "fused" and out is not None:
            out = out.clone()
            out.view(-1)[0] ^= 1
        return out

    monkeypatch.setattr(Conv2d, "_onednn_output", wrong_fused)
    conv = _conv(32, 48, 3)
    x = _activation((3, 32, 9, 10), 1)
    assert torch.equal(_on("auto", conv, x), _on("reference", conv, x))
    assert list(conv._fastest.values()) == ["accumulator"]


@needs_onednn
def test_auto_falls_back_where_onednn_computes_a_geometry_wrongly() -> None:
    g = torch.Generator().manual_seed(9)
    w = torch.randint(-128, 128, (12, 4, 5, 5), generator=g, dtype=torch.int8)
    scale = torch.rand(12, generator=g, dtype=torch.float64) * 0.01 + 0.001
    conv = Conv2d(w, scale, torch.randn(12, generator=g), torch.tensor(0.04), (2, 3), (3, 0))
    x = _activation((2, 4, 8, 5), 3)  # one output column at a horizontal stride of 3
    reference = _on("reference", conv, x)
    assert torch.equal(_on("auto", conv, x), reference)
    [chosen] = conv._fastest.values()
    for path in FAST[1:]:
        if not torch.equal(_on(path, conv, x), reference):
            assert chosen != path


@needs_onednn
@pytest.mark.parametrize("residual", [False, True])
def test_the_accumulator_path_requantizes_in_chunks_to_the_same_integers(
    monkeypatch: pytest.MonkeyPatch, residual: bool
) -> None:
    monkeypatch.setattr(conv_module, "_REQUANT_CHUNK", 2 * 48 * 8 * 8)  # 2 of 5 images
    conv = _conv(24, 48, 3, clamp=(0, 127), residual=residual)
    x = _activation((5, 24, 8, 8), 4, low=0)
    args = [x]
    if residual:
        args.append(QTensor(_activation((5, 48, 8, 8), 5).int_repr(), torch.tensor(0.03)))
    assert torch.equal(_on("accumulator", conv, *args), _on("reference", conv, *args))


@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (3, 5, 7, 3), (2, 64, 1, 1)])
@pytest.mark.parametrize("differences", [0, 1, 40])
def test_mismatches_finds_every_differing_position(
    shape: tuple[int, ...], differences: int
) -> None:
    g = torch.Generator().manual_seed(differences)
    lo = torch.randint(-128, 127, shape, generator=g, dtype=torch.int8)
    lo = lo.contiguous(memory_format=torch.channels_last)
    hi = lo.clone(memory_format=torch.channels_last)
    flat = hi.permute(0, 2, 3, 1).reshape(-1)  # a view of hi's memory
    at = torch.randperm(flat.numel(), generator=g)[:differences]
    flat[at] += 1
    expected = torch.ne(lo, hi).permute(0, 2, 3, 1).reshape(-1).nonzero().reshape(-1)
    assert expected.shape[0] == min(differences, flat.numel())
    assert torch.equal(kernels.mismatches(lo, hi), expected)
    values = torch.arange(expected.numel(), dtype=torch.int8)
    for layout in (torch.channels_last, torch.contiguous_format):
        target = lo.clone(memory_format=layout)
        kernels.put_nhwc(target, expected, values)
        assert torch.equal(target.permute(0, 2, 3, 1).reshape(-1)[expected], values)
        assert int((target != lo).sum()) <= expected.numel()


@pytest.mark.parametrize(
    ("cin", "cout", "k", "geometry"),
    [
        (8, 6, 3, kernels.ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
        (8, 6, 3, kernels.ConvGeometry((2, 1), (2, 0), (2, 1), 1)),
        (8, 8, 3, kernels.ConvGeometry((1, 1), (1, 1), (1, 1), 8)),  # depthwise
        (8, 12, 1, kernels.ConvGeometry((2, 2), (0, 0), (1, 1), 4)),  # grouped 1x1, strided
        (3, 5, 5, kernels.ConvGeometry((1, 2), (2, 2), (1, 1), 1)),
    ],
)
def test_exact_conv_at_is_the_convolution_at_every_position(
    cin: int, cout: int, k: int, geometry: kernels.ConvGeometry
) -> None:
    g = torch.Generator().manual_seed(cin * cout + k)
    x = torch.randint(-128, 128, (3, cin, 7, 9), generator=g, dtype=torch.int8)
    w = torch.randint(
        -128, 128, (cout, cin // geometry.groups, k, k), generator=g, dtype=torch.int8
    )
    exact = F.conv2d(x.double(), w.double(), None, *geometry.args())
    packed = kernels.PackedConv(w, geometry)
    windows = packed.windows(7, 9)
    assert windows.out_size == tuple(exact.shape[2:])
    at = torch.arange(exact.numel())  # every output position, in NHWC order
    got = kernels.exact_conv_at(x, packed.taps, geometry, windows, at)
    assert torch.equal(got.double(), exact.permute(0, 2, 3, 1).reshape(-1))


@needs_onednn
@pytest.mark.parametrize("in_features", [300, 2100])  # 2100: input-feature groups
@pytest.mark.parametrize("int32_out", [False, True])
def test_linear_on_onednn_equals_the_reference(in_features: int, int32_out: bool) -> None:
    g = torch.Generator().manual_seed(7)
    w = torch.randint(-128, 128, (40, in_features), generator=g, dtype=torch.int8)
    w[:, :] = w.abs().clamp(min=90) if in_features > 2000 else w
    lin = Linear(
        w,
        torch.rand(40, generator=g, dtype=torch.float64) * 0.01,
        torch.randn(40, generator=g),
        None if int32_out else torch.tensor(0.2),
    )
    x = QTensor(torch.randint(-128, 128, (6, 5, in_features), generator=g, dtype=torch.int8), 0.02)
    assert torch.equal(_on("fused", lin, x), _on("reference", lin, x))
    assert lin._packed is not None
    assert (len(lin._packed[1].ranges) > 1) == (in_features > 2000)


def test_describe_says_which_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAT_INT_KERNELS", raising=False)
    kernels.select("reference")
    assert kernels.describe().startswith("integer kernels: reference")
    assert "\n" not in kernels.describe()
    kernels.select(None)
    line = kernels.describe()
    assert len(line) < 120 and "\n" not in line
    if kernels._onednn_status()[0]:
        assert "oneDNN int8 conv, exact, per layer bracketed or accumulator" in line
        kernels.select("fused")
        assert "oneDNN int8 conv with bracketed requantization" in kernels.describe()
    else:
        assert "reference" in line


def test_a_failed_self_test_falls_back_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "self_test", lambda: "dense 3x3 accumulator inexact")
    monkeypatch.setattr(kernels, "_status", None)
    assert kernels.active_path() == "reference"
    assert "self-test failed: dense 3x3 accumulator inexact" in kernels.describe()
    conv = _conv(8, 8, 3)
    x = _activation((1, 8, 5, 5), 8)
    assert torch.equal(_on("fused", conv, x), _on("reference", conv, x))
    monkeypatch.setattr(kernels, "_status", None)  # the real self-test again next time


def test_a_reduced_float32_precision_turns_onednn_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    assert kernels.active_path() == "reference"


# --- the small ops' lookup tables --------------------------------------------------------


def _q(shape: tuple[int, ...], seed: int, scale: float) -> QTensor:
    g = torch.Generator().manual_seed(seed)
    return QTensor(torch.randint(-128, 128, shape, generator=g, dtype=torch.int8), scale)


@pytest.mark.parametrize("scales", [(0.02, 0.05), (0.3, 0.0071), (0.04, 0.04)])
def test_binary_tables_are_the_elementwise_requantization(scales: tuple[float, float]) -> None:
    f = QFunctional(torch.tensor(0.045))
    a, b = _q((2, 3, 5, 7), 9, scales[0]), _q((3, 1, 7), 10, scales[1])
    xa, xb = torch.broadcast_tensors(a.int_repr(), b.int_repr())
    (ma, mb), shift = f.multipliers(list(scales))
    for sign, out in ((1, f.add(a, b)), (-1, f.sub(a, b))):
        expect = requantize([(xa, ma), (xb, sign * mb)], shift)
        assert torch.equal(out.int_repr(), expect)
    (m,), shift = f.multipliers([scales[0] * scales[1]], 128 * 128)
    prod = xa.to(torch.int32) * xb.to(torch.int32)
    assert torch.equal(f.mul(a, b).int_repr(), requantize([(prod, m)], shift))
    joined = f.cat([a, a], dim=1).int_repr()
    (m,), shift = f.multipliers([scales[0]])
    assert torch.equal(joined[:, :3], requantize([(a.int_repr(), m)], shift))


def test_unary_tables_are_the_elementwise_requantization() -> None:
    x = _q((4, 6, 5, 5), 11, 0.05)
    relu6 = ReLU6(torch.tensor(0.03))
    m, shift = relu6.multiplier(0.05)
    expect = requantize([(x.int_repr(), m)], shift, relu6.qmin, relu6.qmax)
    assert torch.equal(relu6(x).int_repr(), expect)
    act = Elementwise(torch.tanh, torch.tensor(0.01))
    table = act.table(0.05)
    assert torch.equal(act(x).int_repr(), table[x.int_repr().long() + 128])
    cl = QTensor(x.int_repr().contiguous(memory_format=torch.channels_last), 0.05)
    assert torch.equal(act(cl).int_repr(), table[x.int_repr().long() + 128])


def test_pools_on_int8_and_float32_equal_the_float64_sums() -> None:
    x = _q((2, 3, 9, 10), 12, 0.05)
    for args in ((3, 2, 1, 1, False), (2, 2, 0, 2, True), (3, 3, 1, 1, True)):
        got = MaxPool2d(*args)(x).int_repr()
        assert torch.equal(got, F.max_pool2d(x.int_repr().float(), *args).to(torch.int8))
    pool = AvgPool2d(3, 2, 1, True, False, None, torch.tensor(0.04))
    sums = F.avg_pool2d(x.int_repr().double(), 3, 2, 1, True, True, 1)
    divisor = pool.divisors(9, 10, sums.shape[-2], sums.shape[-1])
    from hatcli.quant.nn.quantized.pooling import average_multipliers

    m, shift = average_multipliers(0.05, divisor, pool.output_scale, 9)
    expect = requantize([(sums.to(torch.int32), m)], shift)
    assert torch.equal(pool(x).int_repr(), expect)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_and_linear_on_cuda_equal_the_cpu() -> None:
    conv = _conv(16, 24, 3, clamp=(0, 127))
    x = _activation((2, 16, 9, 9), 13)
    cpu = _on("reference", conv, x)
    xc = QTensor(x.int_repr().cuda(), x.q_scale)
    assert torch.equal(conv.cuda()(xc).int_repr().cpu(), cpu)
    lin = Linear(
        torch.randint(-128, 128, (10, 37), dtype=torch.int8),
        torch.rand(10, dtype=torch.float64) * 0.01,
        torch.randn(10),
        torch.tensor(0.1),
    )
    xl = _q((3, 37), 14, 0.02)  # rows, inner and outer sizes _int_mm refuses on CUDA
    expect = lin(xl).int_repr()
    got = lin.cuda()(QTensor(xl.int_repr().cuda(), xl.q_scale)).int_repr().cpu()
    assert torch.equal(got, expect)


@needs_onednn
def test_fast_paths_equal_the_reference_on_random_layers() -> None:
    """Random geometry, groups, clamps, signs of multipliers, biases, residuals, layouts
    and input signs (80 layers, each at an output scale that spreads it over the int8
    range): both oneDNN paths give the reference's integers."""
    import random

    rng = random.Random(0)
    checked = 0
    for trial in range(80):
        g = torch.Generator().manual_seed(trial)
        cin = rng.choice([3, 8, 16, 32, 64])
        groups = rng.choice([1, 1, 2, 4, cin])
        groups = groups if cin % groups == 0 else 1
        cout = cin if groups == cin else rng.choice([8, 16, 24]) * groups
        k, stride, dilation = rng.choice([1, 3, 5]), rng.choice([1, 2]), rng.choice([1, 2])
        clamp = rng.choice([(-128, 127), (0, 127), (0, rng.randint(1, 120))])
        wmax = rng.choice([8, 40, 128])
        weight = torch.randint(-wmax, wmax, (cout, cin // groups, k, k), generator=g)
        conv = _conv(
            cin, cout, k, groups=groups, stride=stride, dilation=dilation, clamp=clamp,
            weight=weight.to(torch.int8), residual=rng.random() < 0.3, seed=trial,
        )  # fmt: skip
        n, size = rng.choice([1, 3]), rng.choice([5, 8, 13])
        x = _activation((n, cin, size, size), trial, low=rng.choice([-128, 0]))
        args = [x]
        with torch.no_grad():
            kernels.select("reference")
            out = conv(*args) if not isinstance(conv, ConvAdd2d) else None
        if isinstance(conv, ConvAdd2d):
            span = dilation * (k - 1) + 1
            side = (size + 2 * (k // 2 * dilation) - span) // stride + 1
            r = _activation((n, cout, side, side), trial + 1000)
            args.append(QTensor(r.int_repr(), torch.tensor(0.03)))
        else:
            assert out is not None
            spread = float((out.int_repr().abs().max() + 1) * 0.04)
            conv.output_scale = torch.tensor(spread / rng.choice([60.0, 127.0, 300.0]))
            conv._forget()
        expect = _on("reference", conv, *args)
        for path in FAST:
            assert torch.equal(_on(path, conv, *args), expect), (trial, path)
        assert conv._packed is not None  # oneDNN ran
        checked += 1
    assert checked == 80


@needs_onednn
def test_a_layer_that_ran_on_onednn_can_be_copied_and_saved() -> None:
    """oneDNN's packed weights cannot be copied; copies derive them again."""
    conv = _conv(16, 24, 3)
    x = _activation((2, 16, 6, 6), 1)
    lin = Linear(
        torch.randint(-128, 128, (5, 40), dtype=torch.int8),
        torch.rand(5, dtype=torch.float64) * 0.01 + 0.001,
        torch.randn(5),
        torch.tensor(0.2),
    )
    xl = QTensor(torch.randint(-128, 128, (3, 40), dtype=torch.int8), 0.02)
    for module, inp in ((conv, x), (lin, xl)):
        before = _on("auto", module, inp)
        assert torch.equal(_on("auto", copy.deepcopy(module), inp), before)
        torch.save(module, io.BytesIO())
        assert torch.equal(_on("auto", module, inp), before)
