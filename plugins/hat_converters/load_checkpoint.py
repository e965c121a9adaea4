"""LoadCheckpoint: put a checkpoint's weights into the model as the pipeline has shaped it."""

from __future__ import annotations

from torch import nn

from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.convert import ConvertContext
from hatcli.engine.load_weights import load_weights


class LoadCheckpoint:
    """Load ``state_dict``; a checkpoint saved after ``FuseBN`` absorbed some BN absorbs
    the same BN in the model (the QAT modules' own state) before its weights go in."""

    def __init__(self, checkpoint_path: str, strict: bool = True) -> None:
        self.checkpoint_path = checkpoint_path
        self.strict = strict

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        checkpoint = load_checkpoint(self.checkpoint_path)
        load_weights(model, checkpoint, self.checkpoint_path, strict=self.strict)
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
