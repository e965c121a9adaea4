"""Validation metrics: accumulate exact sums over batches, compute once at the end."""

from __future__ import annotations

import torch


class Metric:
    """``reset()``, then ``update(outputs, targets, loss)`` per batch, then ``compute()``."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """The keys ``compute`` returns (a Checkpoint can monitor them)."""
        return []


class TopKAccuracy(Metric):
    """Fraction of samples whose target is among the ``k`` highest outputs."""

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
        self.total += int(targets.shape[0])

    def compute(self) -> dict[str, float]:
        return {self.name: self.correct / max(self.total, 1)}

    def names(self) -> list[str]:
        return [self.name]


class MeanLoss(Metric):
    """The loss averaged over samples (not over batches)."""

    def reset(self) -> None:
        self.total_loss = 0.0
        self.count = 0

    def __init__(self) -> None:
        self.reset()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        self.total_loss += float(loss) * int(targets.shape[0])
        self.count += int(targets.shape[0])

    def compute(self) -> dict[str, float]:
        return {"loss": self.total_loss / max(self.count, 1)}

    def names(self) -> list[str]:
        return ["loss"]
