"""The zoo of plain PyTorch models (tests/zoo) that users bring to ``hat`` unchanged: each
builds, gives outputs of the right shape, trains, and traces with ``torch.fx`` in eval
mode (what graph-mode quantization starts from); the zoo's plugin registers each with a
schema that matches its constructor."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from jsonschema import Draft202012Validator
from torch import nn
from zoo import INPUT_SHAPE, MODELS, SEGMENTATION
from zoo.plugin import PLUGIN_MODULE, PREFIX, plugin_module

from hatcli import plugins

NAMES = list(MODELS)
CLASSES = {name: 4 if name in SEGMENTATION else 10 for name in NAMES}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and share the machine best)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name](num_classes=CLASSES[name])


def _batch(name: str, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *INPUT_SHAPE, generator=g)
    shape = (n, *INPUT_SHAPE[1:]) if name in SEGMENTATION else (n,)
    return x, torch.randint(0, CLASSES[name], shape, generator=g)


def _expected_shape(name: str, n: int) -> tuple[int, ...]:
    if name in SEGMENTATION:
        return (n, CLASSES[name], *INPUT_SHAPE[1:])
    return (n, CLASSES[name])


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_the_task_shape_in_train_and_eval(name: str) -> None:
    model = _build(name)
    x, _ = _batch(name, n=3)
    assert model.train()(x).shape == _expected_shape(name, 3)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == _expected_shape(name, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_two_sgd_steps_reach_every_parameter(name: str) -> None:
    model = _build(name).train()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _batch(name)
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        for path, p in model.named_parameters():
            assert p.grad is not None and p.grad.any(), f"{path} got no gradient"
            assert torch.isfinite(p.grad).all(), path
        opt.step()
    after = model.state_dict()
    params = [k for k, _ in model.named_parameters()]
    # the first and the last layer moved (a layer scale of 1e-6 may leave the updates of
    # the LayerNorms it scales below float32 resolution, so not every tensor need move)
    for key in (params[0], params[-1]):
        assert not torch.equal(before[key], after[key]), key
    # BN running statistics moved too: the model was in training mode
    stats = [k for k in before if k.endswith("running_mean")]
    assert all(not torch.equal(before[k], after[k]) for k in stats)


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_in_eval_mode_computes_the_same(name: str) -> None:
    model = _build(name)
    x, y = _batch(name)
    # a few steps first, so BN statistics and weights are not at their initial values
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model.train()(x), y).backward()
        opt.step()
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    assert isinstance(traced, torch.fx.GraphModule)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    assert traced.state_dict().keys() == model.state_dict().keys()
    # every conv of the model is a node of the graph (none hidden in an untraced call)
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    convs = {p for p, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    assert convs and convs <= called


def _constructor_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters
    return {k: p.default for k, p in params.items() if p.default is not p.empty}


def test_the_plugin_registers_every_model_with_its_constructor_schema(plugin: Any) -> None:
    plugin(plugin_module(), PLUGIN_MODULE)
    models = plugins.components("models")
    for name, factory in MODELS.items():
        component = models[PREFIX + name]
        assert component.factory is factory
        assert component.plugin == PLUGIN_MODULE
        schema = component.schema
        Draft202012Validator.check_schema(schema)
        defaults = _constructor_defaults(factory)
        assert set(schema["properties"]) == set(defaults), name
        for key, value in defaults.items():
            expected = list(value) if isinstance(value, tuple) else value
            assert schema["properties"][key]["default"] == expected, (name, key)
        validator = Draft202012Validator(schema)
        assert validator.is_valid({})
        assert validator.is_valid({k: p["default"] for k, p in schema["properties"].items()})
        assert not validator.is_valid({"num_classes": 1})
        assert not validator.is_valid({"no_such_argument": 1})
