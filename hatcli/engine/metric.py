"""Validation metrics: accumulate exact sums over batches, compute once at the end."""

from __future__ import annotations

import math

import torch

from hatcli.engine.distributed import all_reduce_sum


class Metric:
    """What a ``hat_register_metrics`` factory returns: a validation metric that
    accumulates exact sums over batches and computes once at the end.

    ``Validation`` calls ``reset()``, then ``update(outputs, targets, loss)`` for each
    batch of its split, then ``reduce_over_processes()`` and ``compute()``; the results
    join ``ctx.metrics``. Subclass it and implement ``reset``, ``update``, ``compute``
    and ``names``; list the attributes that add up in ``sums``.
    """

    sums: tuple[str, ...] = ()
    """Names of the number attributes that add up over batches (counts, totals). With
    several processes they are summed over ranks before ``compute``, so results are
    over every sample (exact counts, not a mean of means)."""

    def reduce_over_processes(self) -> None:
        """Replace each of ``sums`` by its total over all processes (nothing to do in one
        process). Override it only for state that does not add up."""
        totals = all_reduce_sum([float(getattr(self, name)) for name in self.sums])
        for name, value in zip(self.sums, totals, strict=True):
            setattr(self, name, value)

    def reset(self) -> None:
        """Start a new evaluation: set every accumulator to zero."""
        raise NotImplementedError

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: the model's ``outputs``, the data's ``targets`` and the batch's
        mean ``loss``, all on the stage's device. Called under ``torch.no_grad()``."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """The results by name, from the accumulated sums; NaN when no sample was seen."""
        raise NotImplementedError

    def names(self) -> list[str]:
        """The keys ``compute`` returns, known before any batch (a ``Checkpoint``'s
        ``monitor_metric_key`` is checked against them)."""
        return []


class TopKAccuracy(Metric):
    """Fraction of targets that are among the ``k`` highest outputs along dim 1: of
    samples for class scores ``[N, C]``, of pixels for per-pixel scores ``[N, C, H, W]``
    with masks ``[N, H, W]`` (segmentation)."""

    sums = ("correct", "total")

    def __init__(self, k: int = 1, name: str | None = None) -> None:
        self.k = k
        self.name = name or ("accuracy" if k == 1 else f"top{k}_accuracy")
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        top = outputs.topk(min(self.k, outputs.shape[1]), dim=1).indices
        self.correct += int((top == targets.unsqueeze(1)).any(dim=1).sum())
        self.total += int(targets.numel())

    def compute(self) -> dict[str, float]:
        return {self.name: self.correct / self.total if self.total else math.nan}

    def names(self) -> list[str]:
        return [self.name]


class MeanLoss(Metric):
    """The loss averaged over samples (not over batches)."""

    sums = ("total_loss", "count")

    def reset(self) -> None:
        self.total_loss = 0.0
        self.count = 0

    def __init__(self) -> None:
        self.reset()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        self.total_loss += float(loss) * int(targets.shape[0])
        self.count += int(targets.shape[0])

    def compute(self) -> dict[str, float]:
        return {"loss": self.total_loss / self.count if self.count else math.nan}

    def names(self) -> list[str]:
        return ["loss"]
