"""Absorbing BatchNorm mid-QAT in the with-BN modes (what HAT's FuseBN callback does)."""

from __future__ import annotations

import torch
from torch import nn

from hatcli.quant.nn.qat.conv_bn import Conv2d as QATConv2d


def absorb_bn(module: nn.Module) -> dict[nn.Parameter, nn.Parameter | None]:
    """Absorb the BN of every QAT conv-BN block in ``module`` (itself included), in place.

    Returns the old -> new Parameter mapping: conv weights and biases map to themselves
    (they are updated in place), BN parameters to ``None`` (no longer used).
    """
    mapping: dict[nn.Parameter, nn.Parameter | None] = {}
    for m in module.modules():
        if isinstance(m, QATConv2d):
            mapping.update(m.fuse_norm())
    return mapping


def holds_bn(module: nn.Module) -> bool:
    """Whether ``module`` (itself included) holds a QAT conv-BN block that trains with BN
    or did until its BN was absorbed: what ``FuseBN`` may name."""
    return any(isinstance(m, QATConv2d) and (m.has_bn or m.bn_absorbed) for m in module.modules())


def update_optimizer_params(
    optimizer: torch.optim.Optimizer, mapping: dict[nn.Parameter, nn.Parameter | None]
) -> None:
    """Re-point ``optimizer`` after ``absorb_bn``: replace mapped Parameters (moving their
    state) and drop those mapped to ``None``."""
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            new = mapping.get(p, p)
            if new is not p and p in optimizer.state:
                state = optimizer.state.pop(p)
                if new is not None:
                    optimizer.state[new] = state
            if new is not None:
                params.append(new)
        group["params"] = params
