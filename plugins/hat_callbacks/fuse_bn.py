"""FuseBN: absorb the BN of named sub-modules at given steps or epochs (with-BN qat_modes)."""

from __future__ import annotations

import difflib
from typing import Any

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.errors import InputError
from hatcli.quant import absorb_bn, update_optimizer_params
from hatcli.quant.absorb_bn import holds_bn
from hatcli.quant.qat_mode import fuse_bn_mode_problem


class FuseBN(Callback):
    """HAT's FuseBN: ``modules[i]`` (dotted names) are absorbed at ``step_or_epoch[i]``.

    The absorbed conv keeps its Parameter objects, so the optimizer goes on training
    them; BN parameters leave the optimizer. BN is always absorbed in the training model
    itself, so HAT's ``inplace`` (absorb into a copy when false) has no counterpart.
    """

    order = -5  # before Validation and Checkpoint see the step

    def __init__(
        self,
        modules: list[list[str]],
        step_or_epoch: list[int],
        update_by: str = "step",
    ) -> None:
        if len(modules) != len(step_or_epoch):
            raise ValueError(
                f"modules has {len(modules)} entries but step_or_epoch has {len(step_or_epoch)}"
            )
        self.plan = list(zip(step_or_epoch, modules, strict=True))
        self.update_by = update_by
        self.absorbed: list[str] = []

    def check(self, ctx: LoopContext) -> None:
        problem = fuse_bn_mode_problem(str(ctx.qat_mode))
        if problem is not None:
            raise InputError(problem)
        names = [name for name, _ in ctx.model.named_modules()]
        for _, group in self.plan:
            for name in group:
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise InputError(f"FuseBN: the model has no sub-module {name!r}{hint}")
                module = ctx.model.get_submodule(name)
                if not holds_bn(module):  # absorbed before a resume counts: the model says
                    raise InputError(
                        f"FuseBN: {name!r} ({type(module).__name__}) holds no BN to absorb "
                        "(is the model converted by Float2QAT before this stage trains?)"
                    )

    def on_step_begin(self, ctx: LoopContext) -> None:
        if self.update_by == "step":
            self._absorb_due(ctx, ctx.global_step)

    def on_epoch_begin(self, ctx: LoopContext) -> None:
        if self.update_by == "epoch":
            self._absorb_due(ctx, ctx.epoch)

    def _absorb_due(self, ctx: LoopContext, now: int) -> None:
        for when, group in self.plan:
            for name in group:
                if when <= now and name not in self.absorbed:
                    self.absorb(ctx, name)

    def absorb(self, ctx: LoopContext, name: str) -> None:
        mapping = absorb_bn(ctx.model.get_submodule(name))
        if ctx.optimizer is not None:
            update_optimizer_params(ctx.optimizer, mapping)
        if ctx.on_model_changed is not None:
            ctx.on_model_changed()  # e.g. DDP re-wraps the model without the BN parameters
        self.absorbed.append(name)
        ctx.log({"event": "fuse_bn", "module": name})

    def state_dict(self) -> dict[str, Any]:
        return {"absorbed": list(self.absorbed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.absorbed = list(state.get("absorbed", []))


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["modules", "step_or_epoch"],
    "properties": {
        "modules": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "description": "Groups of dotted sub-module names, e.g. [[backbone], [neck]].",
        },
        "step_or_epoch": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "description": "When each group is absorbed; same length as modules.",
        },
        "update_by": {"enum": ["step", "epoch"], "default": "step"},
    },
}
