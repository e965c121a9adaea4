"""Folding BatchNorm into the preceding conv: the one formula every stage uses.

With ``s = gamma / sqrt(running_var + eps)`` per output channel:
``W' = W * s`` and ``b' = (b - running_mean) * s + beta``.
"""

from __future__ import annotations

import torch
from torch import nn


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """``s = gamma / sqrt(running_var + eps)``, one value per channel."""
    assert bn.running_var is not None, "BatchNorm without running stats cannot be folded"
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def fold_bn_bias(bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``b' = (b - running_mean) * s + beta``."""
    assert bn.running_mean is not None
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return (b - bn.running_mean) * bn_scale(bn) + beta


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-output-channel vector to broadcast over a weight with ``ndim`` dims."""
    return t.reshape([-1] + [1] * (ndim - 1))


@torch.no_grad()
def fold_bn_into_conv_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into ``conv`` in place: the weight Parameter is kept (scaled), the bias
    Parameter is kept if the conv had one, created otherwise."""
    s = bn_scale(bn)
    new_bias = fold_bn_bias(conv.bias, bn)
    conv.weight.mul_(channel_view(s, conv.weight.dim()))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.detach().clone())
    else:
        conv.bias.copy_(new_bias)
