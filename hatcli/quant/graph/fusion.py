"""Fusing traced conv(+BN)(+add)(+ReLU/ReLU6) and linear(+ReLU) calls into hat's blocks.

Each fused chain becomes one ``hatcli.nn`` block built from the model's own modules, at
the conv's name (``layer1.0.conv1``), so the QAT module made from it keeps that name and
decides by its qat_mode whether BN is folded. The block's call takes the chain's last
place in the graph: every input of the chain (a residual computed after the conv, as
a ResNet's downsample is) is defined by then. A BatchNorm2d that follows no conv becomes
a depthwise 1x1 conv (weight 1) with that BN: a per-channel affine in every qat_mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

import hatcli.nn as float_nn
from hatcli.quant.graph import ops
from hatcli.quant.graph.tracer import SCOPE


def _activation(node: fx.Node, fuser: _Fuser) -> nn.Module | None:
    """ReLU or ReLU6 if ``node`` applies one to its first argument, else ``None``."""
    if node.op == "call_module":
        # Not fuser.module: an activation module called twice (a ResNet block's one
        # ReLU) fuses at each call, each fusion getting a ReLU of its own.
        mod = fuser.gm.get_submodule(str(node.target))
        if fuser.kept_float(str(node.target), mod):
            return None
        if type(mod) in (nn.ReLU, nn.ReLU6):
            return type(mod)()
        if type(mod) is nn.Hardtanh and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return nn.ReLU6()
        return None
    if node.op not in ("call_function", "call_method") or len(node.args) != 1:
        return None
    if node.target is F.hardtanh:
        bounds = (node.kwargs.get("min_val", -1.0), node.kwargs.get("max_val", 1.0))
        return nn.ReLU6() if bounds == (0.0, 6.0) else None
    if node.target in ops.RELU:
        return nn.ReLU()
    if node.target in ops.RELU6:
        return nn.ReLU6()
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


class _Fuser:
    def __init__(self, gm: fx.GraphModule, kept_float: Callable[[str, nn.Module], bool]) -> None:
        self.gm = gm
        self.kept_float = kept_float
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.erased: set[fx.Node] = set()

    def module(self, node: fx.Node) -> nn.Module | None:
        if node.op != "call_module" or self.calls[node.target] != 1:
            return None  # a module called twice keeps its calls apart
        mod: nn.Module = self.gm.get_submodule(str(node.target))
        return None if self.kept_float(str(node.target), mod) else mod

    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node in self.erased:  # by an earlier fusion
                continue
            mod = self.module(node)
            if type(mod) is nn.Conv2d:
                self.conv_chain(node, mod)
            elif type(mod) is nn.Linear:
                self.linear_chain(node, mod)
            elif type(mod) is nn.BatchNorm2d and mod.track_running_stats:
                self.lone_bn(node, mod)

    def conv_chain(self, node: fx.Node, conv: nn.Module, bn: nn.Module | None = None) -> None:
        chain, residual, act = [node], None, None
        nxt = _only_user(node)
        if bn is None and nxt is not None:
            candidate = self.module(nxt)
            if type(candidate) is nn.BatchNorm2d and candidate.track_running_stats:
                bn = candidate
                chain.append(nxt)
                nxt = _only_user(nxt)
        if nxt is not None and nxt.target in ops.ADD and len(nxt.args) == 2 and not nxt.kwargs:
            other = nxt.args[1] if nxt.args[0] is chain[-1] else nxt.args[0]
            if isinstance(other, fx.Node) and other is not chain[-1] and other.op != "get_attr":
                residual = other
                chain.append(nxt)
                nxt = _only_user(nxt)
        if nxt is not None:
            act = _activation(nxt, self)
            if residual is not None and isinstance(act, nn.ReLU6):
                act = None  # no conv-add-ReLU6 block: the ReLU6 stays an op of its own
            if act is not None:
                chain.append(nxt)
        block = _conv_block(conv, bn, act, residual is not None)  # type: ignore[arg-type]
        if len(chain) == 1 and bn is None and act is None:
            return  # a lone conv: swapped as it is
        args = (chain[0].args[0],) if residual is None else (chain[0].args[0], residual)
        self.replace(chain, block, args)

    def linear_chain(self, node: fx.Node, linear: nn.Linear) -> None:
        nxt = _only_user(node)
        act = _activation(nxt, self) if nxt is not None else None
        if nxt is None or act is None:
            return
        self.replace([node, nxt], float_nn.LinearReLU.from_parts(linear, act), node.args[:1])

    def lone_bn(self, node: fx.Node, bn: nn.BatchNorm2d) -> None:
        channels = bn.num_features
        conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        conv = conv.to(ref.device) if ref is not None else conv
        with torch.no_grad():
            conv.weight.fill_(1.0)
        self.conv_chain(node, conv, bn)

    def replace(self, chain: list[fx.Node], block: nn.Module, args: tuple[Any, ...]) -> None:
        """Put ``block`` at the name of the chain's first module, called where the chain
        ends; the chain's nodes go."""
        first, last = chain[0], chain[-1]
        name = str(first.target)
        qconfig = getattr(self.gm.get_submodule(name), "qconfig", False)
        if qconfig is not False:  # set by the model's set_qconfig: the block inherits it
            block.qconfig = qconfig  # type: ignore[assignment]  # any attribute works
        self.gm.delete_submodule(name)
        self.gm.add_submodule(name, block)
        with self.gm.graph.inserting_before(last):
            fused = self.gm.graph.call_module(name, args)
        fused.meta[SCOPE] = first.meta.get(SCOPE, "")
        last.replace_all_uses_with(fused)
        for n in reversed(chain):
            self.gm.graph.erase_node(n)
            self.erased.add(n)


def _conv_block(
    conv: nn.Conv2d, bn: nn.Module | None, act: nn.Module | None, add: bool
) -> float_nn.ConvBN2d:
    relu, relu6 = isinstance(act, nn.ReLU), isinstance(act, nn.ReLU6)
    if add:
        cls: type[float_nn.ConvBN2d] = float_nn.ConvBNAddReLU2d if relu else float_nn.ConvBNAdd2d
    elif relu:
        cls = float_nn.ConvBNReLU2d
    elif relu6:
        cls = float_nn.ConvBNReLU62d
    else:
        cls = float_nn.ConvBN2d
    return cls.from_parts(conv, bn, act)


def fuse(gm: fx.GraphModule, kept_float: Callable[[str, nn.Module], bool]) -> None:
    """Fuse every conv(+BN)(+add)(+ReLU/ReLU6), linear+ReLU/ReLU6 and lone BN in ``gm``;
    a module ``kept_float(name, module)`` says stays float is not fused."""
    _Fuser(gm, kept_float).run()
    gm.graph.lint()
