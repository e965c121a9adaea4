"""Graph-mode preparation: a plain PyTorch model -> its QAT model, by tracing.

Steps: trace (``tracer``), fuse conv/BN/add/activation chains (``fusion``), then walk
the graph in order and give every op its QAT form (``ops``): quantized ops become QAT
modules named after the module that called them (``layer1.0.add``), their float inputs
quantized first (a ``QuantStub`` after the producer, shared by its readers); a float
island's quantized inputs are dequantized (a ``DeQuantStub``); outputs leave as float.
The QAT model is a ``torch.fx.GraphModule`` keeping the model's module names; its state
dict keys depend only on the model's code, so each run prepares the same keys.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import fx, nn

import hatcli.nn as float_nn
from hatcli.quant import stubs
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.graph import ops
from hatcli.quant.graph.fusion import fuse
from hatcli.quant.graph.report import (
    DEQUANTIZE,
    FLOAT_ISLAND,
    INT8,
    INT32_OUT,
    KEEPS_SCALE,
    QUANTIZE,
    TABLE,
    OpRecord,
)
from hatcli.quant.graph.tracer import SCOPE, trace
from hatcli.quant.mappings import FLOAT_TO_QAT
from hatcli.quant.nn import qat
from hatcli.quant.observer import MovingAverageMinMaxObserver
from hatcli.quant.qat_mode import QATMode
from hatcli.quant.qconfig import QConfig, get_default_qat_out_qconfig, get_default_qat_qconfig
from hatcli.quant.qconfig_spec import QConfigSpec
from hatcli.quant.quantize import QuantizationError, prepare_qat, propagate_qconfig_

QUANTIZED, FLOAT, CONSTANT, NOT_TENSOR = "q", "f", "c", "n"

CONSTANT_QCONFIG = QConfig(
    activation=partial(
        FakeQuantize, observer=partial(MovingAverageMinMaxObserver, averaging_constant=1.0)
    ),
    weight=None,
)
"""A parameter read by a quantized op (a layer scale): per-tensor int8 of its current range."""

_KEPT_FLOAT = "float"
DEFAULT = "default int8"


class _Preparer:
    def __init__(
        self,
        gm: fx.GraphModule,
        root: nn.Module,
        mode: QATMode,
        spec: QConfigSpec,
        own_qconfigs: bool,
        leaves: set[str],
    ) -> None:
        self.gm, self.graph, self.root = gm, gm.graph, root
        self.mode, self.spec, self.own, self.leaves = mode, spec, own_qconfigs, leaves
        self.state: dict[fx.Node, str] = {}
        self.sequences: set[fx.Node] = set()
        self.quantized: dict[fx.Node, fx.Node] = {}
        self.dequantized: dict[fx.Node, fx.Node] = {}
        self.records: list[OpRecord] = []
        self.names: set[str] = {n for n, _ in gm.named_modules()}
        # The float modules already swapped, by name: a module called again (one ReLU
        # in two places) gets a QAT module per call, from the same float module.
        self.originals: dict[str, nn.Module] = {}

    # --- names and qconfigs ----------------------------------------------------------

    def new_name(self, scope: str, base: str) -> str:
        stem = f"{scope}.{base}" if scope else base
        name, i = stem, 0
        while name in self.names or self._clashes(name):
            i += 1
            name = f"{stem}_{i}"
        self.names.add(name)
        return name

    def _clashes(self, name: str) -> bool:
        parent, _, leaf = name.rpartition(".")
        try:
            holder = self.gm.get_submodule(parent) if parent else self.gm
        except AttributeError:
            return False
        return hasattr(holder, leaf)

    def qconfig(
        self, name: str, type_names: Sequence[str], scope: str, module: nn.Module | None = None
    ) -> tuple[QConfig | None, str]:
        """The op's qconfig (``None``: kept float) and how it was chosen."""
        rule = self.spec.rule_for(name, type_names)
        if rule is not None:
            return rule.qconfig, f"spec: {rule.text}"
        if self.own:
            holder = module if module is not None else self._scope_module(scope)
            own = getattr(holder, "qconfig", None)
            return own, "model's set_qconfig" if own is not None else _KEPT_FLOAT
        if self.spec.default is not None:
            return self.spec.default.qconfig, f"spec default: {self.spec.default.text}"
        return get_default_qat_qconfig(), DEFAULT

    def _scope_module(self, scope: str) -> nn.Module:
        try:
            return self.root.get_submodule(scope)
        except AttributeError:
            return self.root

    # --- quantize / dequantize where the state changes -------------------------------

    def quantized_input(self, node: fx.Node) -> fx.Node:
        state = self.state.get(node, NOT_TENSOR)
        if state in (QUANTIZED, NOT_TENSOR):
            return node
        if node in self.quantized:
            return self.quantized[node]
        scope, stem = _value_name(node)
        name = self.new_name(scope, f"{stem}_quant")
        qconfig: QConfig | None = CONSTANT_QCONFIG
        how = "constant int8"
        if state != CONSTANT:
            qconfig, how = self.qconfig(name, ["QuantStub"], scope)
        if qconfig is None or qconfig.activation is None:
            qconfig, how = get_default_qat_qconfig(), DEFAULT  # a quantized op reads it
        self.gm.add_submodule(name, qat.QuantStub(qconfig))
        with self.graph.inserting_after(node):
            new = self.graph.call_module(name, (node,))
        new.meta[SCOPE] = scope
        self.state[new] = QUANTIZED
        self.quantized[node] = new
        self.records.append(OpRecord(name, "QuantStub", QUANTIZE, how))
        return new

    def float_input(self, node: fx.Node) -> fx.Node:
        if self.state.get(node) != QUANTIZED:
            return node
        if node not in self.dequantized:
            scope, stem = _value_name(node)
            name = self.new_name(scope, f"{stem}_dequant")
            self.gm.add_submodule(name, qat.DeQuantStub())
            with self.graph.inserting_after(node):
                new = self.graph.call_module(name, (node,))
            new.meta[SCOPE] = scope
            self.state[new] = FLOAT
            self.dequantized[node] = new
            self.records.append(OpRecord(name, "DeQuantStub", DEQUANTIZE, "-"))
        return self.dequantized[node]

    def _map(self, arg: Any, fn: Any) -> Any:
        if isinstance(arg, fx.Node):
            return fn(arg) if self._is_tensor(arg) else arg
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._map(a, fn) for a in arg)
        if isinstance(arg, dict):
            return {k: self._map(v, fn) for k, v in arg.items()}
        return arg

    def _is_tensor(self, node: fx.Node) -> bool:
        return self.state.get(node, NOT_TENSOR) != NOT_TENSOR and node not in self.sequences

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        return _flat_nodes([node.args, node.kwargs])

    # --- the walk ---------------------------------------------------------------------

    def run(self) -> fx.GraphModule:
        for node in list(self.graph.nodes):
            if node.op == "placeholder":
                self.state[node] = FLOAT
            elif node.op == "get_attr":
                value = _fetch(self.gm, str(node.target))
                self.state[node] = CONSTANT if isinstance(value, torch.Tensor) else NOT_TENSOR
            elif node.op == "output":
                node.args = self._map(node.args, self.float_input)
            elif node.op == "call_module":
                self.call_module(node)
            else:
                self.call(node)
        self.gm.delete_all_unused_submodules()
        self.gm.quantization_records = self.records  # type: ignore[assignment]
        self.graph.lint()
        self.gm.recompile()
        return self.gm

    def call(self, node: fx.Node) -> None:
        inputs = self._inputs(node)
        tensor_inputs = [n for n in inputs if self.state.get(n, NOT_TENSOR) != NOT_TENSOR]
        if not tensor_inputs or ops.gives_no_tensor(node):
            self.state[node] = NOT_TENSOR
            return
        if ops.is_identity(node):
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            self.graph.erase_node(node)
            return
        if ops.is_shape_op(node):
            source = tensor_inputs[0]
            self.state[node] = self.state[source]
            if ops.gives_tensor_sequence(node):
                self.sequences.add(node)
            return
        tensors = {n for n in tensor_inputs if n not in self.sequences}
        rep = ops.match_call(node, tensors)
        if rep is None or any(n in self.sequences for n in _flat_nodes(rep.inputs)):
            self.island(node, _call_name(node))
            return
        self.replace(node, rep)

    def replace(
        self,
        node: fx.Node,
        rep: ops.Replacement,
        module: nn.Module | None = None,
        name: str | None = None,
    ) -> None:
        scope = node.meta.get(SCOPE, "")
        name = name or self.new_name(scope, rep.base)
        qconfig, how = self.qconfig(name, [rep.type_name, *rep.type_names], scope, module)
        if qconfig is None:
            if module is not None:
                _keep_float(module)
            self.island(node, rep.type_name, how)
            return
        if how == DEFAULT and rep.weighted and self._feeds_only_output(node):
            qconfig, how = get_default_qat_out_qconfig(), "default int32 out (model output)"
        # Only a conv or linear has an int32 form, and a conv adding a residual adds it
        # on the output grid: every other op keeps an int8 output.
        int32_impossible = rep.has_residual or not rep.weighted
        if qconfig.activation is None and rep.requantizes and int32_impossible:
            qconfig = QConfig(get_default_qat_qconfig().activation, qconfig.weight)
            why = "a conv with a residual add" if rep.has_residual else "this op"
            how += f"; int8 out: {why} needs an output scale"
        new_module = rep.make(qconfig)
        if rep.quantizes_inputs:
            args = [self._map(a, self.quantized_input) for a in rep.inputs]
        else:
            args = list(rep.inputs)
        if node.op == "call_module" and name == node.target:
            self.gm.delete_submodule(name)
            self.originals[name] = module  # type: ignore[assignment]
        self.gm.add_submodule(name, new_module)
        with self.graph.inserting_before(node):
            new = self.graph.call_module(name, tuple(args))
        new.meta[SCOPE] = scope
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        int32_out = getattr(new_module, "activation_post_process", False) is None
        runs_as = rep.how if rep.how != INT8 else (INT32_OUT if int32_out else INT8)
        self.records.append(OpRecord(name, rep.type_name, runs_as, how))
        self.state[new] = QUANTIZED
        if int32_out:
            # int32 values with a scale per channel: dequantized at once, so that shape
            # ops and float code after them see float values in every model.
            dequantized = self.float_input(new)
            new.replace_all_uses_with(dequantized, delete_user_cb=lambda u: u is not dequantized)
            self.state[new] = FLOAT

    def _feeds_only_output(self, node: fx.Node) -> bool:
        """Whether ``node``'s value reaches only the model's outputs, through shape ops."""
        for user in node.users:
            if user.op == "output":
                continue
            passes = ops.is_shape_op(user) or (
                user.op == "call_module"
                and isinstance(
                    self.gm.get_submodule(str(user.target)), (*ops.SHAPE_MODULES, stubs.DeQuantStub)
                )
            )
            if not passes or not self._feeds_only_output(user):
                return False
        return True

    def island(self, node: fx.Node, type_name: str, how: str = "no integer form") -> None:
        node.args = self._map(node.args, self.float_input)
        node.kwargs = self._map(node.kwargs, self.float_input)
        self.state[node] = FLOAT
        if ops.gives_tensor_sequence(node):
            self.sequences.add(node)
        scope, stem = _value_name(node)
        name = f"{scope}.{stem}" if scope else stem
        self.records.append(OpRecord(name, type_name, FLOAT_ISLAND, how))

    def call_module(self, node: fx.Node) -> None:
        name = str(node.target)
        mod = self.originals.get(name) or self.gm.get_submodule(name)
        tensor_inputs = [n for n in self._inputs(node) if self._is_tensor(n)]
        if isinstance(mod, ops.IDENTITY_MODULES) and tensor_inputs:
            node.replace_all_uses_with(tensor_inputs[0])
            self.graph.erase_node(node)
            return
        if isinstance(mod, ops.SHAPE_MODULES) and tensor_inputs:
            self.state[node] = self.state[tensor_inputs[0]]
            return
        type_name = type(mod).__name__
        if name in self.leaves:
            self.leaf(node, mod)
            return
        factory = FLOAT_TO_QAT.get(type(mod))
        if factory is None:
            _keep_float(mod)
            self.island(node, type_name)
            return
        if factory is qat.DeQuantStub:
            node.replace_all_uses_with(self.float_input(node.args[0]))  # type: ignore[arg-type]
            self.graph.erase_node(node)
            return
        keeps = factory in (qat.ReLU, qat.MaxPool2d, qat.Dropout)
        rep = ops.Replacement(
            name.rpartition(".")[2],
            type_name,
            list(node.args),
            partial(_from_float, factory, mod, self.mode),
            KEEPS_SCALE if keeps else _how_module(factory),
            not keeps,
            weighted=issubclass(factory, (qat.Conv2d, qat.Linear, qat.ConvTranspose2d)),
            has_residual=issubclass(factory, qat.ConvBNAdd2d),
        )
        if factory is qat.QuantStub:
            # The model's own QuantStub: its input is float by definition.
            rep.inputs = [self.float_input(node.args[0])]  # type: ignore[arg-type]
            rep.quantizes_inputs = False
        if isinstance(mod, float_nn.ConvBN2d):
            rep.type_names.append(type(mod.conv).__name__)
        if name in self.originals:
            parent, _, leaf = name.rpartition(".")
            self.replace(node, rep, mod, self.new_name(parent, leaf))
        else:
            self.replace(node, rep, mod, name)

    def leaf(self, node: fx.Node, mod: nn.Module) -> None:
        """A module listed in ``leaf_modules``: prepared by eager rules if it can be
        (``fuse_model``), else a float island."""
        name = str(node.target)
        qconfig, how = self.qconfig(name, [type(mod).__name__], "", mod)
        if qconfig is None or not callable(getattr(mod, "fuse_model", None)):
            _keep_float(mod)
            self.island(node, type(mod).__name__, how if qconfig is None else "leaf module")
            return
        mod.fuse_model()  # type: ignore[operator]
        if callable(getattr(mod, "set_qconfig", None)):
            mod.set_qconfig()  # type: ignore[operator]
        else:
            mod.qconfig = qconfig  # type: ignore[assignment]
        try:
            prepare_qat(mod, self.mode, inplace=True)
        except QuantizationError as exc:
            raise QuantizationError(f"{name}: {exc}") from None
        node.args = self._map(node.args, self.quantized_input)
        self.state[node] = QUANTIZED
        self.records.append(OpRecord(name, type(mod).__name__, "eager module", how))


def _keep_float(mod: nn.Module) -> None:
    """Mark ``mod`` and everything in it float, so conversion leaves it as it is."""
    for m in mod.modules():
        m.qconfig = None  # type: ignore[assignment]


def _from_float(factory: Any, mod: nn.Module, mode: QATMode, qconfig: QConfig) -> nn.Module:
    mod.qconfig = qconfig  # type: ignore[assignment]
    kwargs = {"qat_mode": mode} if issubclass(factory, qat.Conv2d) else {}
    built: nn.Module = factory.from_float(mod, **kwargs)
    return built


def _how_module(factory: Any) -> str:
    return TABLE if factory is qat.Elementwise else INT8


def _value_name(node: fx.Node) -> tuple[str, str]:
    """Where a stub for ``node``'s value goes, and its name stem: beside the module
    that made the value or the parameter read (``layer1.fc`` -> ``layer1``, ``fc``),
    else in the calling module under the node's name."""
    if node.op in ("call_module", "get_attr"):  # a module's output, or a parameter
        parent, _, leaf = str(node.target).rpartition(".")
        return parent, leaf
    return node.meta.get(SCOPE, ""), node.name


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    holder, _, attr = target.rpartition(".")
    return getattr(gm.get_submodule(holder) if holder else gm, attr)


def _flat_nodes(args: Iterable[Any]) -> list[fx.Node]:
    found: list[fx.Node] = []

    def collect(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(list(args), collect)
    return found


def _call_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def records(model: nn.Module) -> list[OpRecord]:
    """What graph-mode preparation did to each op of ``model`` (empty for other models)."""
    found: list[OpRecord] = getattr(model, "quantization_records", [])
    return found


def prepare(
    model: nn.Module,
    qat_mode: QATMode | str = QATMode.FuseBN,
    leaf_modules: Sequence[str] = (),
    qconfig: QConfigSpec | dict[str, Any] | None = None,
) -> fx.GraphModule:
    """The QAT model of ``model`` (which is not changed) by graph-mode preparation.

    ``leaf_modules`` are traced as single calls (their code is not traced): quantized by
    eager rules if they have ``fuse_model``, else kept float. ``qconfig`` is the spec's
    per-module qconfig section; a model's own ``set_qconfig`` is applied first.
    """
    spec = qconfig if isinstance(qconfig, QConfigSpec) else QConfigSpec.parse(qconfig)
    mode = QATMode(qat_mode)
    model = copy.deepcopy(model)
    own = callable(getattr(model, "set_qconfig", None))
    if own:
        model.set_qconfig()  # type: ignore[operator]
        propagate_qconfig_(model)
    gm = trace(model, leaf_modules)

    def kept_float(name: str, module: nn.Module) -> bool:
        rule = spec.rule_for(name, [type(module).__name__])
        if rule is not None:
            return rule.qconfig is None
        return own and getattr(module, "qconfig", None) is None

    fuse(gm, kept_float)
    prepared = _Preparer(gm, model, mode, spec, own, set(leaf_modules)).run()
    spec.check_all_used(r.name for r in records(prepared))
    return prepared
