"""LoadCheckpoint: put a checkpoint's weights into the model as the pipeline has shaped it."""

from __future__ import annotations

import re

from torch import nn

from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.convert import ConvertContext
from hatcli.errors import CheckpointError


def _summarise(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class LoadCheckpoint:
    def __init__(self, checkpoint_path: str, strict: bool = True) -> None:
        self.checkpoint_path = checkpoint_path
        self.strict = strict

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        checkpoint = load_checkpoint(self.checkpoint_path)
        state = checkpoint["state_dict"]
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if self.strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {_summarise(missing)}")
            if unexpected:
                parts.append(f"unexpected {_summarise(unexpected)}")
            stage = checkpoint.get("meta", {}).get("stage")
            hint = f" (it was saved by stage {stage!r})" if stage else ""
            raise CheckpointError(
                f"{self.checkpoint_path}: does not fit the model ({type(model).__name__}) as the "
                f"pipeline has built it so far{hint}: {'; '.join(parts)}; check the converter "
                "order, or set strict: false"
            )
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            mismatched = re.findall(r"size mismatch for ([\w.]+)", str(exc))
            detail = f"shape mismatch in {_summarise(mismatched)}" if mismatched else str(exc)
            raise CheckpointError(
                f"{self.checkpoint_path}: does not fit the model ({type(model).__name__}): "
                f"{detail.splitlines()[0]}"
            ) from None
        context.loaded_checkpoint = checkpoint
        context.loaded_from = self.checkpoint_path
        return model


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["checkpoint_path"],
    "properties": {
        "checkpoint_path": {
            "type": "string",
            "description": "e.g. '{work_dir}/float-checkpoint-best.pth.tar'",
        },
        "strict": {
            "type": "boolean",
            "default": True,
            "description": "Every model tensor must be in the checkpoint and nothing else.",
        },
    },
}
