"""LoadCheckpoint: put a checkpoint's weights into the model as the pipeline has shaped it."""

from __future__ import annotations

from torch import nn

from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.convert import ConvertContext
from hatcli.engine.load_weights import load_weights


class LoadCheckpoint:
    """Load ``state_dict``; a checkpoint saved after ``FuseBN`` absorbed some BN absorbs
    the same BN in the model (the QAT modules' own state) before its weights go in."""

    def __init__(
        self,
        checkpoint_path: str,
        strict: bool = True,
        allow_miss: bool = False,
        ignore_extra: bool = False,
    ) -> None:
        self.checkpoint_path = checkpoint_path
        self.allow_missing = allow_miss or not strict
        self.allow_unexpected = ignore_extra or not strict

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        checkpoint = load_checkpoint(self.checkpoint_path)
        load_weights(
            model,
            checkpoint,
            self.checkpoint_path,
            allow_missing=self.allow_missing,
            allow_unexpected=self.allow_unexpected,
        )
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
            "description": "Every model tensor must be in the checkpoint and nothing else "
            "(false: allow_miss and ignore_extra both).",
        },
        "allow_miss": {
            "type": "boolean",
            "default": False,
            "description": "HAT's: model tensors missing from the checkpoint keep their values.",
        },
        "ignore_extra": {
            "type": "boolean",
            "default": False,
            "description": "HAT's: checkpoint tensors the model does not have are ignored.",
        },
    },
}
