"""Batch processors (HAT's ``batch_processor``): how a training batch becomes its loss.

The default computes ``loss(model(x), y)``, checking the batch on the way; a model that
computes its own losses (a detection or segmentation model returning a dict of losses in
training) uses ``ModelReturnsLoss``. Validation always calls ``model(x)`` and measures
the outputs. Plugins add processors with ``hat_register_batch_processors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hatcli.engine.data_checks import checked_forward
from hatcli.errors import RunError


class BatchProcessor:
    """``loss(...)`` is one training batch's loss, a scalar tensor to backpropagate."""

    def loss(
        self,
        model: nn.Module,
        inputs: Any,
        targets: Any,
        loss_fn: Any,
        data: str,
        when: str,
        layers: nn.Module | None = None,
    ) -> torch.Tensor:
        """``data`` names the split and ``when`` the batch, for messages; ``layers`` is
        the model inside ``model`` when that wraps it (DDP)."""
        raise NotImplementedError


class BasicBatchProcessor(BatchProcessor):
    """``loss_fn(model(inputs), targets)``; a batch at fault is a located ``DataError``."""

    def loss(
        self,
        model: nn.Module,
        inputs: Any,
        targets: Any,
        loss_fn: Any,
        data: str,
        when: str,
        layers: nn.Module | None = None,
    ) -> torch.Tensor:
        return checked_forward(model, loss_fn, inputs, targets, data, when, layers)[1]


class ModelReturnsLoss(BatchProcessor):
    """``model(inputs, targets)`` returns the loss, or a mapping of named losses that are
    summed (the stage's ``loss`` is not used in training)."""

    def loss(
        self,
        model: nn.Module,
        inputs: Any,
        targets: Any,
        loss_fn: Any,
        data: str,
        when: str,
        layers: nn.Module | None = None,
    ) -> torch.Tensor:
        out = model(inputs, targets)
        if isinstance(out, Mapping):
            parts = list(out.values())
            if parts and all(isinstance(p, torch.Tensor) and p.numel() == 1 for p in parts):
                return torch.stack([p.reshape(()) for p in parts]).sum()
        elif isinstance(out, torch.Tensor) and out.numel() == 1:
            return out.reshape(())
        raise RunError(
            f"ModelReturnsLoss: the model returned {type(out).__name__} in training ({when}); "
            "it must return a loss (a one-element tensor) or a dict of them"
        )
