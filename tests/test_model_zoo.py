"""ResNet18 and MobileNetV2 (CIFAR style): shapes, fusing, QAT in every qat_mode, and the
integer model against QAT eval.

The models are small (ResNet18(width=8), MobileNetV2(width_mult=0.25)) and first trained
for a few float steps on a synthetic 10-class task, so their logits have the range of a
trained classifier (the output scale is measured as in tests/quant: ``max|y| / 127.5``).

QAT eval computes with each layer's integer twin, so it equals the integer model bit for
bit. The float simulation QAT trains with (``float_simulation()``) computes in float32:
fed identical inputs, a layer differs from its integer version only where a value lies
within float32 rounding of a rounding boundary (one step, in ~1e-5 of the elements),
which each layer is checked for on its own. End to end, such a step is scaled by the
weights that follow and spreads with depth: ResNet18's outputs stay within one output
scale (>= 99.9%), MobileNetV2's large folded depthwise weights spread it to about 0.2% of
its outputs (>= 99% is asserted); none reach two.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hat_models.mobilenet_v2 import MobileNetV2
from hat_models.resnet import ResNet18
from jsonschema import Draft202012Validator
from torch import nn

from hatcli import plugins
from hatcli.quant import (
    QATTensor,
    QTensor,
    convert,
    float_simulation,
    get_qat_mode,
    prepare_qat,
    set_qat_mode,
)
from hatcli.quant.nn import quantized
from hatcli.quant.nn.quantized import conv as conv_module
from hatcli.quant.nn.quantized.base import IntegerModule

MODES = ["fuse_bn", "with_bn", "with_bn_reverse_fold"]
ARCHS: dict[str, Callable[[], nn.Module]] = {
    "ResNet18": lambda: ResNet18(width=8),
    "MobileNetV2": lambda: MobileNetV2(width_mult=0.25),
}


@pytest.fixture(autouse=True)
def _one_thread_and_qat_mode() -> Iterator[None]:
    threads, mode = torch.get_num_threads(), get_qat_mode()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    set_qat_mode(mode)


class _Task:
    """10 classes: a smooth random colour pattern per class (the same for every seed)
    plus noise; ``seed`` picks the sample stream (deterministic)."""

    def __init__(self, seed: int) -> None:
        coarse = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        self.templates = F.interpolate(coarse, size=32, mode="bilinear")
        self.gen = torch.Generator().manual_seed(1000 + seed)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=self.gen)
        return self.templates[y] + 0.5 * torch.randn(n, 3, 32, 32, generator=self.gen), y


def _train(model: nn.Module, task: _Task, steps: int, lr: float, batch: int) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        x, y = task.batch(batch)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


_FLOAT: dict[str, nn.Module] = {}
_QAT: dict[tuple[str, str], nn.Module] = {}


def float_model(arch: str) -> nn.Module:
    """Briefly trained, BN statistics re-estimated (as after a real training run), eval."""
    if arch not in _FLOAT:
        torch.manual_seed(0)
        model = ARCHS[arch]()
        task = _Task(0)
        _train(model, task, steps=20, lr=0.05, batch=16)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        with torch.no_grad():
            for _ in range(4):
                model(task.batch(16)[0])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        _FLOAT[arch] = model.eval()
    return copy.deepcopy(_FLOAT[arch])


def qat_model(arch: str, mode: str) -> nn.Module:
    """The float model fused, prepared in ``mode``, two QAT steps at batch 4, in eval."""
    if (arch, mode) not in _QAT:
        model = float_model(arch)
        model.fuse_model()
        model.set_qconfig()
        qat = prepare_qat(model, mode)
        torch.manual_seed(1)
        _train(qat, _Task(1), steps=2, lr=0.01, batch=4)
        _QAT[arch, mode] = qat.eval()
    return copy.deepcopy(_QAT[arch, mode])


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (ResNet18(num_classes=10, width=8), (4, 10)),
        (ResNet18(num_classes=7, in_channels=1, width=4), (4, 7)),
        (MobileNetV2(num_classes=10, width_mult=0.25), (4, 10)),
        (MobileNetV2(num_classes=3, in_channels=1, width_mult=0.1), (4, 3)),
    ],
)
def test_output_shapes(model: nn.Module, shape: tuple[int, int]) -> None:
    x = torch.randn(4, model.stem.conv.in_channels, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == shape
        assert model.train()(x).shape == shape


def test_architecture() -> None:
    r = ResNet18()
    assert sum(p.numel() for p in r.parameters()) == 11_173_962  # CIFAR ResNet-18
    assert r.stem.conv.stride == (1, 1) and r.stem.conv.kernel_size == (3, 3)
    assert [s[0].conv1.conv.stride[0] for s in (r.layer1, r.layer2, r.layer3, r.layer4)] == [
        1,
        2,
        2,
        2,
    ]
    assert r.layer1[0].downsample is None and r.layer2[0].downsample.conv.kernel_size == (1, 1)
    m = MobileNetV2()
    assert sum(p.numel() for p in m.parameters()) == 2_236_682
    dw = [b.depthwise.conv for b in m.features]
    assert all(c.groups == c.in_channels == c.out_channels for c in dw)
    assert sum(b.use_residual for b in m.features) == 10
    assert [c.stride[0] for c in dw].count(2) == 3  # 32x32 -> 4x4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_fuse_model_keeps_eval_outputs(arch: str, mode: str) -> None:
    model = float_model(arch)
    x = _Task(2).batch(4)[0]
    with torch.no_grad():
        before = model(x)
        model.fuse_model()
        model.fuse_model()  # idempotent
        assert torch.equal(model(x), before)  # it marks blocks fused; BN stays
    model.set_qconfig()
    q = prepare_qat(model, mode)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert (n_bn == 0) == (mode == "fuse_bn")  # folded by the QAT modules in fuse_bn


def _layer_steps(q: nn.Module, i: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each integer layer's inputs fed to its QAT layer too: |QAT - integer| in units of
    the layer's output scale (an int32 output: in the scale an int8 one would have)."""
    seen: dict[str, tuple[tuple, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, (a, o)))
        for name, m in i.named_modules()
        if isinstance(m, IntegerModule) and name
    ]
    with torch.no_grad():
        i(x)
    for h in hooks:
        h.remove()
    qat_modules = dict(q.named_modules())
    steps = {}
    for name, (args, out) in seen.items():
        if not isinstance(out, QTensor):
            continue
        qargs = [
            QATTensor.wrap(a.dequantize(), a.q_scale) if isinstance(a, QTensor) else a for a in args
        ]
        with torch.no_grad(), float_simulation():
            ref = qat_modules[name](*qargs).as_subclass(torch.Tensor)
        scale = out.q_scale if out.q_axis is None else ref.abs().max() / 127.5
        steps[name] = (ref - out.dequantize()).abs() / scale
    return steps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_integer_model_matches_qat_eval(arch: str, mode: str) -> None:
    q = qat_model(arch, mode)
    i = convert(q)
    dw = [m for m in i.modules() if isinstance(m, quantized.Conv2d) and m.groups > 1]
    assert (len(dw) > 0) == (arch == "MobileNetV2")
    x, y = _Task(3).batch(64)

    # The float simulation, layer by layer on identical inputs: exact but for float32
    # rounding ties.
    steps = _layer_steps(q, i, x[:4])
    assert len(steps) > 20
    for name, step in steps.items():
        assert step.max() <= 1.0 + 1e-3, (name, step.max())
        assert (step > 1e-3).float().mean() <= 1e-3, name

    # End to end, in the scale an int8 output would have (as tests/quant measures it).
    with torch.no_grad():
        assert torch.equal(q(x), i(x))  # eval runs the integer twins
        with float_simulation():
            yq, yi = q(x), i(x)
    step = (yq - yi).abs() / (yq.abs().max() / 127.5)
    within_one = (step <= 1.0 + 1e-3).float().mean()
    assert step.max() <= 2.0 + 1e-3
    assert within_one >= (0.999 if arch == "ResNet18" else 0.99), within_one
    assert (yq.argmax(1) == yi.argmax(1)).float().mean() >= 0.95
    assert (yi.argmax(1) == y).float().mean() >= 0.25  # it learned something (chance: 0.1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_integer_model_identical_across_batch_sizes(arch: str, monkeypatch) -> None:
    i = convert(qat_model(arch, "with_bn"))
    x = _Task(4).batch(6)[0]
    with torch.no_grad():
        whole = i(x)
        parts = torch.cat([i(x[:1]), i(x[1:4]), i(x[4:])])
        again = i(x)
        # Large batches run in chunks of whole images: 2 at 32x32 here, 1 once smaller.
        monkeypatch.setattr(conv_module, "_CHUNK_ROWS", 2048)
        chunked = i(x)
    assert torch.equal(whole, parts) and torch.equal(whole, again)
    assert torch.equal(whole, chunked)


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("ResNet18", {"num_classes": 100, "in_channels": 1, "width": 16}, {"width": 0}),
        ("ResNet18", {}, {"depth": 18}),
        ("MobileNetV2", {"num_classes": 2, "width_mult": 0.5}, {"width_mult": 0}),
        ("MobileNetV2", {"in_channels": 4}, {"num_classes": 1}),
    ],
)
def test_registered_with_schema(name: str, good: dict, bad: dict) -> None:
    component = plugins.get_component("models", name)
    assert component.factory in (ResNet18, MobileNetV2) and component.schema is not None
    validator = Draft202012Validator(component.schema)
    assert validator.is_valid(good) and not validator.is_valid(bad)
