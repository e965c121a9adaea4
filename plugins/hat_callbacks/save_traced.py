"""SaveTraced: write ``{save_dir}/{stage}-traced.pt``, a TorchScript file that runs without hat."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from hatcli.engine.callback import Callback
from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.engine.context import LoopContext
from hatcli.errors import InputError, RunError


class SaveTraced(Callback):
    order = 15

    def __init__(
        self,
        save_dir: str | None = None,
        input_shape: list[int] | None = None,
        trace_inputs: list | None = None,
        data: str = "val",
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.input_shape = input_shape
        self.trace_inputs = trace_inputs
        self.split = data

    def check(self, ctx: LoopContext) -> None:
        no_input = self.input_shape is None and self.trace_inputs is None
        if not no_input and self.split in ctx.data_loaders:
            # Fail now, not after training: the example must look like the data.
            given = tuple(self.example_input(ctx).shape[1:])
            sample, _ = ctx.data_loaders[self.split].dataset[0]
            if given != tuple(sample.shape):
                raise InputError(
                    f"SaveTraced: the trace input's sample shape {list(given)} differs from "
                    f"the {self.split!r} data's {list(sample.shape)}"
                )
        if no_input and self.split not in ctx.data_loaders:
            raise InputError(
                f"SaveTraced: give input_shape or trace_inputs, or a data loader "
                f"{self.split!r} to take an example input from"
            )

    def example_input(self, ctx: LoopContext) -> torch.Tensor:
        if self.trace_inputs is not None:
            try:
                return torch.tensor(self.trace_inputs, dtype=torch.float32)
            except (ValueError, TypeError) as exc:
                raise InputError(
                    f"SaveTraced: trace_inputs is not a rectangular array: {exc}"
                ) from None
        if self.input_shape is not None:
            generator = torch.Generator().manual_seed(0)
            return torch.rand(self.input_shape, generator=generator)
        inputs, _ = next(iter(ctx.data_loaders[self.split]))
        return inputs[:1]

    def path(self, ctx: LoopContext) -> Path:
        return (self.save_dir or ctx.work_dir) / f"{ctx.stage}-traced.pt"

    @torch.no_grad()
    def on_loop_end(self, ctx: LoopContext) -> None:
        if not ctx.is_main:
            return
        was_training = ctx.model.training
        ctx.model.eval()
        example = self.example_input(ctx).to(ctx.device)
        expected = ctx.model(example)
        with warnings.catch_warnings():
            # Tracing records this model's fixed scales and shapes, which is the intent.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(ctx.model, example, check_trace=False)
        if not torch.equal(traced(example), expected):
            raise RunError(f"SaveTraced: the traced {ctx.stage} model does not match the model")
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        atomic_write_bytes(self.path(ctx), buffer.getvalue())
        ctx.model.train(was_training)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "save_dir": {"type": "string", "description": "Defaults to work_dir."},
        "input_shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 1,
            "description": "Trace with a random input of this shape.",
        },
        "trace_inputs": {"type": "array", "description": "A literal input (nested lists)."},
        "data": {
            "type": "string",
            "default": "val",
            "description": "Without input_shape or trace_inputs: one sample of this split.",
        },
    },
}
