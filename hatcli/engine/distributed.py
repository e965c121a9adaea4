"""torch.distributed plumbing: the process group, who writes files, reductions over ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from hatcli.errors import InputError
from hatcli.nn.sync_batchnorm import SyncBatchNorm2d


def launched_world_size() -> int:
    """The world size a launcher (``hat train --nproc``, torchrun) set, or 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def choose_backend(asked: str, device: torch.device) -> str:
    if asked == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if asked == "nccl" and not torch.cuda.is_available():
        raise InputError("backend 'nccl' needs CUDA GPUs, and none is available; use gloo")
    return asked


def init_process_group(backend: str, device: torch.device) -> None:
    """Join the group the launcher described in the environment (no-op if joined)."""
    if is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def join_launched_group(device: torch.device, backend: str = "auto") -> None:
    """Join the launcher's process group when launched in several processes; the
    backend is checked in any case (``nccl`` without CUDA is an ``InputError``)."""
    chosen = choose_backend(backend, device)
    if launched_world_size() > 1:
        init_process_group(chosen, device)


def lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died or hung.

    Such a failure is a consequence, not a cause: the launcher reports the rank that
    failed for its own reason. gloo raises a plain RuntimeError that names its source.
    """
    if dist.is_available() and isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and "/gloo/" in str(exc)


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Exact sums over ranks (float64), e.g. correct and total counts of a metric."""
    if not is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def min_over_processes(value: int) -> int:
    if not is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any rank (all ranks take the same branch after it)."""
    if not is_initialized():
        return flag
    return all_reduce_sum([float(flag)])[0] > 0


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` becomes a ``SyncBatchNorm2d`` that keeps its ``qconfig``.

    torch's ``SyncBatchNorm.convert_sync_batchnorm`` drops the attribute (and its
    module needs GPUs); losing the qconfig would silently leave the layer unquantized.
    """
    if type(module) is nn.BatchNorm2d:
        return SyncBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
