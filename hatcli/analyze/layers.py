"""The layers of a QAT model that the analysis measures: every quantized op, every float
island, with how it runs and its quantizers (weights and activations apart).

A graph-prepared model lists its ops itself (``hatcli.quant.graph.records``); an eager
one is walked: each module with an integer form is an op, and a module that has a QAT
form but was kept float (``qconfig`` ``None``) is a float island.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.graph import records
from hatcli.quant.graph.report import (
    DEQUANTIZE,
    FLOAT_ISLAND,
    INT8,
    INT32_OUT,
    KEEPS_SCALE,
    TABLE,
    OpRecord,
    kept_float,
)
from hatcli.quant.graph.tracer import SCOPE
from hatcli.quant.mappings import QAT_TO_INTEGER
from hatcli.quant.qconfig_spec import QConfigSpec

STUB_TYPES = ("QuantStub", "DeQuantStub")


@dataclass
class Layer:
    """One op of the model as the analysis sees it."""

    name: str  # dotted name (a module's, or a traced function island's)
    type: str  # the float module class or function it came from
    runs_as: str  # int8, int32 out, table lookup, keeps scale, float island, ...
    qconfig: str  # how its qconfig was chosen
    module: nn.Module | None  # None: a traced function (a float island without a module)
    node: str | None = None  # its fx node, for a traced function island
    weights: list[FakeQuantize] = field(default_factory=list)
    activations: list[FakeQuantize] = field(default_factory=list)
    order: int = -1  # position in execution order (-1: did not run on the data)

    @property
    def quantizers(self) -> list[FakeQuantize]:
        return [*self.weights, *self.activations]

    @property
    def is_island(self) -> bool:
        return self.runs_as == FLOAT_ISLAND

    @property
    def output_quantizer(self) -> FakeQuantize | None:
        """The FakeQuantize of the op's own output, if it has one."""
        fq = getattr(self.module, "activation_post_process", None)
        return fq if isinstance(fq, FakeQuantize) else None


def _quantizers(module: nn.Module) -> tuple[list[FakeQuantize], list[FakeQuantize]]:
    weights: list[FakeQuantize] = []
    activations: list[FakeQuantize] = []
    for name, m in module.named_modules():
        if isinstance(m, FakeQuantize):
            (weights if name.rpartition(".")[2] == "weight_fake_quant" else activations).append(m)
    return weights, activations


def _is_op(module: nn.Module) -> bool:
    return type(module) in QAT_TO_INTEGER


def _eager_runs_as(module: nn.Module) -> str:
    name = type(module).__name__
    if name == "DeQuantStub":
        return DEQUANTIZE
    if name == "Elementwise":
        return TABLE
    if not any(isinstance(m, FakeQuantize) for m in module.modules()):
        return KEEPS_SCALE
    return INT32_OUT if getattr(module, "activation_post_process", False) is None else INT8


def _eager_layers(model: nn.Module, spec: QConfigSpec) -> list[Layer]:
    found: list[Layer] = []
    skip: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        if _is_op(module):
            rule = spec.rule_for(name, [type(module).__name__])
            how = f"spec: {rule.text}" if rule is not None else "model's set_qconfig"
            found.append(Layer(name, type(module).__name__, _eager_runs_as(module), how, module))
            skip.append(name)
        elif kept_float(module):
            rule = spec.rule_for(name, [type(module).__name__])
            how = f"spec: {rule.text}" if rule is not None else "qconfig None"
            found.append(Layer(name, type(module).__name__, FLOAT_ISLAND, how, module))
            skip.append(name)
    return found


def _function_nodes(model: nn.Module) -> dict[str, str]:
    """Record name -> fx node name, for the traced ops that are not modules."""
    if not isinstance(model, fx.GraphModule):
        return {}
    found = {}
    for node in model.graph.nodes:
        if node.op in ("call_function", "call_method"):
            scope = node.meta.get(SCOPE, "")
            found[f"{scope}.{node.name}" if scope else node.name] = node.name
    return found


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _graph_layers(model: nn.Module, ops: list[OpRecord]) -> list[Layer]:
    nodes = _function_nodes(model)
    found = []
    covered = set()
    for record in ops:
        module = _module(model, record.name)
        if module is not None and not _is_op(module) and record.runs_as != FLOAT_ISLAND:
            # A leaf prepared by eager rules: its ops are measured one by one.
            for sub, m in module.named_modules():
                if _is_op(m):
                    name = f"{record.name}.{sub}" if sub else record.name
                    found.append(
                        Layer(name, type(m).__name__, _eager_runs_as(m), record.qconfig, m)
                    )
                    covered.add(name)
            continue
        found.append(
            Layer(
                record.name,
                record.type,
                record.runs_as,
                record.qconfig,
                module,
                node=nodes.get(record.name) if module is None else None,
            )
        )
        covered.add(record.name)
    for name, m in model.named_modules():  # anything the records do not name
        if _is_op(m) and name not in covered and not any(name.startswith(c + ".") for c in covered):
            found.append(Layer(name, type(m).__name__, _eager_runs_as(m), "-", m))
    return [layer for layer in found if layer.module is not None or layer.node is not None]


def find_layers(model: nn.Module, spec: QConfigSpec | None = None) -> list[Layer]:
    """The model's ops with their quantizers, in the order the model lists them."""
    ops = records(model)
    layers = _graph_layers(model, ops) if ops else _eager_layers(model, spec or QConfigSpec())
    for layer in layers:
        if layer.module is not None and not layer.is_island:
            layer.weights, layer.activations = _quantizers(layer.module)
    return layers
