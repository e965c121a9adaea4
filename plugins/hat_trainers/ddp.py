"""distributed_data_parallel_trainer: the Trainer's loop under torch.distributed DDP."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hatcli.engine import distributed
from hatcli.engine.context import LoopContext
from hatcli.engine.loop import Trainer

# torch renamed the option (the old name now warns); older releases know only the old one.
SYNC_BUFFERS_ARG = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else "broadcast_buffers"
)


class DistributedDataParallelTrainer(Trainer):
    """One process per device (gloo on CPU, NCCL on CUDA), started by ``hat train --nproc``
    or torchrun. Started without a launcher it runs as a single process.

    The spec's ``batch_size`` is per process. Gradients are averaged by DDP; observers
    see the range of the global batch (they reduce over ranks) and, with ``sync_bn``,
    BN normalizes over it too, so N processes with batch B train like one with N*B.
    """

    supports_distributed = True

    def __init__(
        self, backend: str = "auto", sync_bn: bool = False, find_unused_parameters: bool = False
    ) -> None:
        self.backend = backend
        self.sync_bn = sync_bn
        self.find_unused_parameters = find_unused_parameters

    def setup(self, device: torch.device) -> None:
        distributed.join_launched_group(device, self.backend)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.sync_bn and distributed.world_size() > 1:
            return distributed.convert_sync_batchnorm(model)
        return model

    def fit(self, ctx: LoopContext) -> None:
        if distributed.world_size() > 1 and ctx.trains:
            self.wrap(ctx)
            ctx.on_model_changed = lambda: self.wrap(ctx)
        try:
            super().fit(ctx)
        finally:
            ctx.forward_model = None
            ctx.on_model_changed = None

    def wrap(self, ctx: LoopContext) -> None:
        device_ids = [ctx.device.index or 0] if ctx.device.type == "cuda" else None
        # SyncBatchNorm keeps BN statistics equal on every rank; without it, rank 0's are
        # sent to the others at each forward. Observers reduce their ranges themselves.
        sync_buffers = {SYNC_BUFFERS_ARG: not self.sync_bn}
        ctx.forward_model = DistributedDataParallel(
            ctx.model,
            device_ids=device_ids,
            find_unused_parameters=self.find_unused_parameters,
            **sync_buffers,
        )


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "backend": {"enum": ["auto", "gloo", "nccl"], "default": "auto"},
        "sync_bn": {
            "type": "boolean",
            "default": False,
            "description": "BatchNorm statistics over all processes (qconfigs are kept).",
        },
        "find_unused_parameters": {"type": "boolean", "default": False},
    },
}
