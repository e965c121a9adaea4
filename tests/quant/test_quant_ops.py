"""The op set of vision networks: each QAT module's eval is its integer module, bit for
bit, and the integer module stays within one output step of the float op applied to its
dequantized input."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant import (
    DeQuantStub,
    QTensor,
    QuantStub,
    convert,
    get_default_qat_out_qconfig,
    get_default_qat_qconfig,
    prepare_qat,
)
from hatcli.quant.mappings import QAT_TO_INTEGER
from hatcli.quant.nn import qat, quantized
from hatcli.quant.nn.qat.conv_transpose import to_transposed_layout
from hatcli.quant.nn.quantized.resize import WEIGHT_BITS, linear_taps
from hatcli.quant.qat_tensor import QATTensor

QCONFIG = get_default_qat_qconfig()
AMPLITUDES = [0.03, 1.0, 40.0]  # several input scales
EPS = 1e-4  # float32 rounding of the dequantized values, in output steps


class Harness(nn.Module):
    """``DeQuantStub(op(QuantStub(x), ...))``, one QuantStub per input; ``joined`` calls
    the op with the list of inputs (cat, stack)."""

    def __init__(self, op: nn.Module, inputs: int = 1, joined: bool = False) -> None:
        super().__init__()
        self.stubs = nn.ModuleList(QuantStub() for _ in range(inputs))
        self.op = op
        self.dequant = DeQuantStub()
        self.joined = joined

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        qs = [stub(x) for stub, x in zip(self.stubs, xs, strict=True)]
        y = self.op(qs) if self.joined else self.op(*qs)
        out: torch.Tensor = self.dequant(y)
        return out


def _prepared(op: nn.Module, inputs: int = 1, joined: bool = False) -> nn.Module:
    model = Harness(op, inputs, joined)
    model.qconfig = QCONFIG
    return prepare_qat(model)


def _inputs(shapes: Sequence[tuple[int, ...]], amplitudes: Sequence[float], seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * a for s, a in zip(shapes, amplitudes, strict=True)]


def _trained_and_converted(
    model: nn.Module, make: Callable[[int], list[torch.Tensor]]
) -> tuple[nn.Module, list[torch.Tensor]]:
    """A few training forwards (the observers see data), then the QAT eval output must be
    the integer model's, bit for bit; returns the integer model and the eval inputs."""
    model.train()
    for seed in range(3):
        model(*make(seed))
    model.eval()
    integer = convert(model)
    xs = make(10)
    with torch.no_grad():
        expected = integer(*xs)
        got = model(*xs)
    assert not isinstance(got, QATTensor) and got.dtype == torch.float32
    assert torch.equal(got, expected)
    return integer, xs


def _integer_op(integer: nn.Module, xs: list[torch.Tensor]) -> tuple[QTensor, list[torch.Tensor]]:
    """The integer op's output and its dequantized inputs."""
    qs = [stub(x) for stub, x in zip(integer.stubs, xs, strict=True)]
    with torch.no_grad():
        y = integer.op(qs) if integer.joined else integer.op(*qs)
    assert isinstance(y, QTensor) and y.dtype == torch.int8
    return y, [q.dequantize() for q in qs]


def _assert_within_steps(y: QTensor, reference: torch.Tensor, steps: float = 1.0) -> None:
    """``y`` within ``steps`` output steps of ``reference`` clamped to the int8 range."""
    s = float(y.q_scale)
    ref = reference.clamp(-128 * s, 127 * s)
    err = (y.dequantize() - ref).abs() / s
    assert float(err.max()) <= steps + EPS
    assert y.shape == reference.shape


# Elementwise


ACTIVATIONS = [
    nn.Sigmoid(),
    nn.Hardsigmoid(),
    nn.SiLU(),
    nn.Hardswish(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.Tanh(),
    nn.LeakyReLU(0.1),
    nn.Hardtanh(-2.0, 2.0),
    nn.ELU(),
    nn.Mish(),
    nn.Softplus(),
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_elementwise_eval_is_its_lookup_table(act: nn.Module, amplitude: float) -> None:
    model = _prepared(act)
    assert isinstance(model.op, qat.Elementwise) and type(model.op.fn) is type(act)
    assert model.op.fn is not act and model.op.name == type(act).__name__
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(4, 3, 5, 5)], [amplitude], seed)
    )
    assert isinstance(integer.op, quantized.Elementwise)
    y, (x,) = _integer_op(integer, xs)
    # The table is the fake quantization of fn: half a step at most, inside the range.
    _assert_within_steps(y, act(x), 0.5)


def test_elementwise_table_holds_every_int8_input() -> None:
    op = qat.Elementwise(torch.sigmoid, QCONFIG)
    assert op.name == "sigmoid" and "fn=sigmoid" in repr(op)
    op(torch.randn(100) * 3)  # the output observer sees data
    s_in = 0.05
    x = QTensor(torch.arange(-128, 128, dtype=torch.int8), torch.tensor(s_in))
    y = quantized.Elementwise.from_qat(op)(x)
    s_out = y.q_scale
    expected = torch.round(torch.sigmoid(x.dequantize()) / s_out).clamp(-128, 127)
    assert torch.equal(y.int_repr().long(), expected.long())
    assert len(set(y.int_repr().tolist())) > 50  # not a degenerate table


def test_elementwise_named_and_function_fn() -> None:
    op = qat.Elementwise(lambda t: t * torch.sigmoid(t), QCONFIG, name="swish")
    assert op.name == "swish"
    model = Harness(op)
    model.qconfig = QCONFIG
    model = prepare_qat(model)
    integer, xs = _trained_and_converted(model, lambda seed: _inputs([(3, 20)], [2.0], seed))
    y, (x,) = _integer_op(integer, xs)
    _assert_within_steps(y, F.silu(x), 0.5)


# Max pooling


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("stride", [None, 1, 2])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_keeps_the_scale_and_equals_the_float_pool(
    kernel: int, stride: int | None, padding: int, dilation: int, ceil_mode: bool
) -> None:
    pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    model = _prepared(pool)
    assert isinstance(model.op, qat.MaxPool2d)
    amplitude = AMPLITUDES[(kernel + padding + dilation) % len(AMPLITUDES)]
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 3, 9, 10)], [amplitude], seed)
    )
    qs = integer.stubs[0](xs[0])
    y = integer.op(qs)
    assert torch.equal(y.q_scale, qs.q_scale)
    assert torch.equal(y.dequantize(), pool(qs.dequantize()))
    x_qat = model.stubs[0](xs[0])
    out = model.op(x_qat)
    assert isinstance(out, QATTensor) and torch.equal(out.q_scale, x_qat.q_scale)


# Average pooling


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("stride", [None, 2])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_pool_requantizes_exact_sums_with_torchs_divisor(
    kernel: int,
    stride: int | None,
    padding: int,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> None:
    pool = nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    model = _prepared(pool)
    assert isinstance(model.op, qat.AvgPool2d)
    amplitude = AMPLITUDES[(kernel + padding + int(ceil_mode)) % len(AMPLITUDES)]
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 3, 9, 10)], [amplitude], seed)
    )
    assert isinstance(integer.op, quantized.AvgPool2d)
    y, (x,) = _integer_op(integer, xs)
    _assert_within_steps(y, pool(x))


def test_avg_pool_divisors_are_torchs() -> None:
    """The divisor of each output position, from pooling ones: torch divides a window's
    sum of ones by it (ceil_mode windows past the input, padding counted or not)."""
    for ceil_mode in (False, True):
        for count_include_pad in (False, True):
            for size in [(7, 7), (8, 9)]:
                op = qat.AvgPool2d(3, 2, 1, ceil_mode, count_include_pad, qconfig=QCONFIG)
                op(torch.randn(1, 1, *size))
                integer = quantized.AvgPool2d.from_qat(op)
                ones = torch.ones(1, 1, *size, dtype=torch.float64)
                sums = F.avg_pool2d(ones, 3, 2, 1, ceil_mode, True, 1)
                means = F.avg_pool2d(ones, 3, 2, 1, ceil_mode, count_include_pad)
                divisors = integer.divisors(*size, *sums.shape[-2:])
                assert torch.equal((sums / means)[0, 0].round().long(), divisors)


# Adaptive average pooling


@pytest.mark.parametrize("output_size", [1, 3, 5, 7, (2, 5)])
@pytest.mark.parametrize("size", [(7, 7), (9, 11)])
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_adaptive_avg_pool_takes_any_output_size(
    output_size: int | tuple[int, int], size: tuple[int, int], amplitude: float
) -> None:
    pool = nn.AdaptiveAvgPool2d(output_size)
    model = _prepared(pool)
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 3, *size)], [amplitude], seed)
    )
    y, (x,) = _integer_op(integer, xs)
    _assert_within_steps(y, pool(x))


@pytest.mark.parametrize("output_size", [1, (1, 2), 3, (3, 6)])
def test_adaptive_avg_pool_windows_agree_where_the_output_divides(
    output_size: int | tuple[int, int],
) -> None:
    """The integral-image path any output size takes gives the block path's bits."""
    op = qat.AdaptiveAvgPool2d(output_size, QCONFIG)
    op(torch.randn(2, 3, 6, 12))
    integer = quantized.AdaptiveAvgPool2d.from_qat(op)
    q = QTensor(torch.randint(-128, 128, (2, 3, 6, 12), dtype=torch.int8), torch.tensor(0.02))
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    uneven = integer._uneven(q.int_repr(), 0.02, oh, ow)
    assert torch.equal(integer(q).int_repr(), uneven.int_repr())


# Mean


@pytest.mark.parametrize(
    ("dim", "keepdim"), [((2, 3), True), ((2, 3), False), (1, False), (-1, True), ((0, 2), False)]
)
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_mean_requantizes_the_exact_sum(
    dim: int | tuple[int, ...], keepdim: bool, amplitude: float
) -> None:
    model = _prepared(qat.Mean(dim, keepdim, QCONFIG))
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(3, 4, 5, 6)], [amplitude], seed)
    )
    assert isinstance(integer.op, quantized.Mean)
    y, (x,) = _integer_op(integer, xs)
    _assert_within_steps(y, x.mean(dim, keepdim))


# Arithmetic

BINARY: list[tuple[type[qat.QFunctional], Callable[..., torch.Tensor]]] = [
    (qat.Add, torch.add),
    (qat.Sub, torch.sub),
    (qat.Mul, torch.mul),
]
SHAPES = [
    ((2, 4, 5, 5), (2, 4, 5, 5)),
    ((2, 4, 1, 1), (2, 4, 5, 5)),  # a squeeze-excitation gate first
    ((2, 4, 5, 5), (2, 4, 1, 1)),
]


@pytest.mark.parametrize(("cls", "fn"), BINARY, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_binary_ops_broadcast_and_rescale_both_inputs(
    cls: type[qat.QFunctional],
    fn: Callable[..., torch.Tensor],
    shapes: tuple[tuple[int, ...], ...],
    amplitude: float,
) -> None:
    model = _prepared(cls(QCONFIG), inputs=2)
    amplitudes = [amplitude, amplitude * 7]  # two input scales
    integer, xs = _trained_and_converted(model, lambda seed: _inputs(shapes, amplitudes, seed))
    assert type(integer.op) is getattr(quantized, cls.__name__)
    y, (a, b) = _integer_op(integer, xs)
    _assert_within_steps(y, fn(a, b))


@pytest.mark.parametrize(("cls", "fn"), [(qat.Cat, torch.cat), (qat.Stack, torch.stack)])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_joins_rescale_every_input_to_the_output_scale(
    cls: type[qat.Cat | qat.Stack], fn: Callable[..., torch.Tensor], dim: int, amplitude: float
) -> None:
    shape = (2, 3, 4, 5)
    model = _prepared(cls(dim, QCONFIG), inputs=3, joined=True)
    amplitudes = [amplitude, amplitude * 5, amplitude / 3]
    integer, xs = _trained_and_converted(model, lambda seed: _inputs([shape] * 3, amplitudes, seed))
    assert type(integer.op) is getattr(quantized, cls.__name__) and integer.op.dim == dim
    y, parts = _integer_op(integer, xs)
    _assert_within_steps(y, fn(parts, dim))


def test_integer_arithmetic_is_the_functional_arithmetic() -> None:
    """Add, Sub, ... are QFunctional call sites: the QFunctional methods give their bits."""
    for cls in (qat.Add, qat.Sub, qat.Mul):
        op = cls(QCONFIG)
        op(torch.randn(10), torch.randn(10))
        integer = QAT_TO_INTEGER[cls](op)
        functional = quantized.QFunctional(integer.output_scale)
        a = QTensor(torch.randint(-128, 128, (10,), dtype=torch.int8), torch.tensor(0.03))
        b = QTensor(torch.randint(-128, 128, (10,), dtype=torch.int8), torch.tensor(0.01))
        method = getattr(functional, cls.__name__.lower())
        assert torch.equal(integer(a, b).int_repr(), method(a, b).int_repr())
    sub = quantized.QFunctional(torch.tensor(0.1))
    a = QTensor(torch.tensor([5, -7, 127], dtype=torch.int8), torch.tensor(0.1))
    assert sub.sub(a, a).int_repr().abs().max() == 0


# Dropout


def test_dropout_trains_as_dropout_and_is_the_identity_in_eval() -> None:
    model = _prepared(nn.Dropout(0.5))
    assert isinstance(model.op, qat.Dropout) and model.op.p == 0.5
    model.train()
    x = torch.randn(64, 32) + 3.0
    x_qat = model.stubs[0](x)
    out = model.op(x_qat)
    assert not isinstance(out, QATTensor)
    dropped = out == 0
    assert 0.3 < float(dropped.float().mean()) < 0.7
    assert torch.allclose(out[~dropped], 2 * x_qat.as_subclass(torch.Tensor)[~dropped])
    model.eval()
    x_qat = model.stubs[0](x)
    assert model.op(x_qat) is x_qat
    integer = convert(model)
    assert isinstance(integer.op, quantized.Dropout)
    with torch.no_grad():
        assert torch.equal(model(x), integer(x))
        q = integer.stubs[0](x)
        assert integer.op(q) is q


# Interpolate

NEAREST = [
    nn.Upsample(size=(7, 9)),
    nn.Upsample(size=5),
    nn.Upsample(scale_factor=2),
    nn.Upsample(scale_factor=1.5),
    nn.Upsample(scale_factor=(2.0, 3.0)),
    nn.Upsample(scale_factor=0.5),
    nn.UpsamplingNearest2d(scale_factor=2),
]


@pytest.mark.parametrize("upsample", NEAREST, ids=repr)
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_nearest_interpolation_keeps_the_scale_and_gathers_as_torch(
    upsample: nn.Module, amplitude: float
) -> None:
    model = _prepared(upsample)
    assert isinstance(model.op, qat.Interpolate) and model.op.activation_post_process is None
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 3, 6, 5)], [amplitude], seed)
    )
    qs = integer.stubs[0](xs[0])
    y = integer.op(qs)
    assert torch.equal(y.q_scale, qs.q_scale)
    assert torch.equal(y.dequantize(), upsample(qs.dequantize()))


BILINEAR = [
    *(
        nn.Upsample(mode="bilinear", align_corners=corners, **where)  # type: ignore[arg-type]
        for corners in (False, True)
        for where in (
            {"size": (11, 7)},
            {"size": 1},
            {"size": (3, 4)},
            {"scale_factor": 2},
            {"scale_factor": 1.7},
            {"scale_factor": (0.5, 2.5)},
        )
    ),
    nn.UpsamplingBilinear2d(scale_factor=2),
    nn.UpsamplingBilinear2d(size=(9, 4)),
]


def _bilinear_steps(s_in: float, s_out: float) -> float:
    """The bilinear integer model's bound, in output steps: half a step of rounding, and
    the fixed-point weights' at most 0.063 input steps (quantized/resize.py)."""
    return 0.5 + 0.063 * s_in / s_out


@pytest.mark.parametrize("upsample", BILINEAR, ids=repr)
@pytest.mark.parametrize("amplitude", AMPLITUDES)
def test_bilinear_interpolation_uses_fixed_point_weights(
    upsample: nn.Module, amplitude: float
) -> None:
    model = _prepared(upsample)
    assert isinstance(model.op, qat.Interpolate) and model.op.mode == "bilinear"
    assert model.op.align_corners == upsample.align_corners
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 3, 6, 5)], [amplitude], seed)
    )
    assert isinstance(integer.op, quantized.Interpolate)
    y, (x,) = _integer_op(integer, xs)
    steps = _bilinear_steps(float(integer.stubs[0].scale), float(y.q_scale))
    assert steps < 1.0  # the output scale is near the input's here: within one step
    _assert_within_steps(y, upsample(x), steps)


@pytest.mark.parametrize("corners", [False, True])
@pytest.mark.parametrize(
    ("length", "out", "scale_factor"), [(5, 10, None), (5, 10, 2.0), (7, 3, None), (6, 13, 2.3)]
)
def test_bilinear_taps_are_torchs_weights_rounded(
    corners: bool, length: int, out: int, scale_factor: float | None
) -> None:
    """Interpolating the unit vectors gives torch's weight matrix."""
    i0, i1, w0, w1 = linear_taps(length, out, scale_factor, corners)
    assert torch.equal(w0 + w1, torch.full_like(w0, 2**WEIGHT_BITS))
    unit = torch.eye(length, dtype=torch.float64).reshape(length, 1, 1, length)
    where = {"scale_factor": (1.0, scale_factor)} if scale_factor else {"size": (1, out)}
    torchs = F.interpolate(unit, mode="bilinear", align_corners=corners, **where)[:, 0, 0]
    ours = torch.zeros(length, out, dtype=torch.float64)
    cols = torch.arange(out)
    ours.index_put_((i0, cols), w0.double(), accumulate=True)
    ours.index_put_((i1, cols), w1.double(), accumulate=True)
    assert float((ours / 2**WEIGHT_BITS - torchs).abs().max()) <= 2.0 ** -(WEIGHT_BITS + 1)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_interpolate_takes_its_size_at_call_time(mode: str) -> None:
    corners = False if mode == "bilinear" else None
    op = qat.Interpolate(mode=mode, align_corners=corners, qconfig=QCONFIG)
    stub = qat.QuantStub(QCONFIG)
    x = torch.randn(2, 3, 5, 6)
    op(stub(x), (8, 9))
    op.eval()
    stub.eval()
    xq = stub(x)
    with torch.no_grad():
        out = op(xq, (7, 4))
    integer = QAT_TO_INTEGER[qat.Interpolate](op)
    q = QTensor(torch.round(xq.as_subclass(torch.Tensor) / xq.q_scale).to(torch.int8), xq.q_scale)
    expected = integer(q, (7, 4))
    assert out.shape == (2, 3, 7, 4) and torch.equal(out, expected.dequantize())


def test_interpolate_refuses_what_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="modes"):
        qat.Interpolate(scale_factor=2, mode="bicubic", qconfig=QCONFIG)
    with pytest.raises(ValueError, match="needs one"):
        qat.Interpolate(scale_factor=2, mode="bilinear", align_corners=False)
    with pytest.raises(ValueError, match="recompute"):
        qat.Interpolate.from_float(nn.Upsample(scale_factor=2, recompute_scale_factor=True))


# ConvTranspose2d

TRANSPOSED = [
    # stride, padding, output_padding, groups, dilation
    (1, 0, 0, 1, 1),
    (2, 0, 1, 1, 1),
    (2, 1, 1, 2, 1),
    (2, 1, 0, 1, 2),
    (3, 2, 2, 4, 1),
    (1, 1, 1, 2, 2),
    (2, 0, 0, 4, 2),
]


@pytest.mark.parametrize(("stride", "padding", "output_padding", "groups", "dilation"), TRANSPOSED)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_quant", [True, False])
def test_conv_transpose_is_an_exact_integer_conv_transpose(
    stride: int,
    padding: int,
    output_padding: int,
    groups: int,
    dilation: int,
    bias: bool,
    out_quant: bool,
) -> None:
    torch.manual_seed(stride + 3 * padding + 5 * groups + 7 * dilation)
    conv = nn.ConvTranspose2d(4, 8, 3, stride, padding, output_padding, groups, bias, dilation)
    with torch.no_grad():
        conv.weight[:, 1] *= 1e-3  # one output channel per group with tiny weights
    model = Harness(conv)
    model.qconfig = QCONFIG
    if not out_quant:
        model.op.qconfig = get_default_qat_out_qconfig()
    model = prepare_qat(model, inplace=True)
    assert isinstance(model.op, qat.ConvTranspose2d) and model.op.conv.weight is conv.weight
    amplitude = AMPLITUDES[(stride + groups) % len(AMPLITUDES)]
    integer, xs = _trained_and_converted(
        model, lambda seed: _inputs([(2, 4, 5, 6)], [amplitude], seed)
    )
    op = integer.op
    assert isinstance(op, quantized.ConvTranspose2d)
    # Per output channel: the tiny channels (1, 3, ... of the [out, in/g] layout) own scales.
    w_scale = op.weight_scale.reshape(groups, -1)
    assert float((w_scale[:, 1] / w_scale[:, 0]).max()) < 0.01
    # The float op on the dequantized input, int8 weights and int32 bias.
    qs = integer.stubs[0](xs[0])
    s_in = float(qs.q_scale)
    p = op.requant_params(s_in)
    w = op.weight.double() * op.weight_scale.reshape(-1, 1, 1, 1)
    b = p.bias.double() * s_in * op.weight_scale
    reference = F.conv_transpose2d(
        qs.dequantize().double(),
        to_transposed_layout(w, groups),
        b,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
    )
    with torch.no_grad():
        y = op(qs)
    if out_quant:
        assert y.dtype == torch.int8
        _assert_within_steps(y, reference.float())
    else:
        assert y.dtype == torch.int32 and y.q_axis == 1
        assert torch.allclose(y.dequantize().double(), reference, rtol=1e-6, atol=1e-6)


def test_conv_transpose_trains_the_shared_float_parameters() -> None:
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    op = qat.ConvTranspose2d.from_float(conv, QCONFIG)
    x = qat.QuantStub(QCONFIG)(torch.randn(2, 4, 5, 5))
    y = op(x)
    assert isinstance(y, QATTensor) and y.shape == (2, 6, 11, 11)
    y.as_subclass(torch.Tensor).square().sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
    assert conv.bias is not None and conv.bias.grad is not None
