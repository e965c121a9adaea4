"""BatchNorm whose training statistics are computed over every process (gloo or NCCL)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; each rank's gradient is the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` with batch mean and variance over all ranks' batches.

    Unlike torch's ``SyncBatchNorm`` it runs on CPU too; the statistics go through an
    autograd-aware all-reduce, so gradients are those of BN over the global batch.
    """

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> SyncBatchNorm2d:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        # Neither affine nor tracking running stats: no tensor to take a device from.
        new.to(bn.weight.device if bn.affine else bn.running_mean.device)  # type: ignore[union-attr]
        new.train(bn.training)
        if hasattr(bn, "qconfig"):
            new.qconfig = bn.qconfig
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        summed: torch.Tensor = _AllReduceSum.apply(stats)  # type: ignore[no-untyped-call]  # torch: untyped
        total = summed[-1]
        mean = summed[:channels] / total
        var = summed[channels : 2 * channels] / total - mean * mean
        if self.track_running_stats:
            # torch types the running statistics Optional; tracking them means they exist.
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
                self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
