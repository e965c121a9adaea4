"""Putting a checkpoint's weights into a model, shaped first as the checkpoint expects."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from hatcli.errors import CheckpointError
from hatcli.quant import absorb_bn


def _summarise(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def absorb_like(model: nn.Module, names: list[str], source: str) -> None:
    """Absorb the BN of ``names``, as ``FuseBN`` had when the checkpoint was saved."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"{source}: was saved with the BN of {name!r} absorbed, but the model "
                f"({type(model).__name__}) has no such sub-module"
            ) from None
        absorb_bn(module)


def load_weights(
    model: nn.Module, checkpoint: dict[str, Any], source: str, *, strict: bool = True
) -> None:
    """Load ``checkpoint['state_dict']`` into ``model``; a mismatch names the tensors."""
    absorb_like(model, list(checkpoint.get("absorbed_bn") or []), source)
    state = checkpoint["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {_summarise(unexpected)}")
        stage = checkpoint.get("meta", {}).get("stage")
        hint = f" (it was saved by stage {stage!r})" if stage else ""
        raise CheckpointError(
            f"{source}: does not fit the model ({type(model).__name__}) as the pipeline has "
            f"built it so far{hint}: {'; '.join(parts)}; check the converter order, or set "
            "strict: false"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        mismatched = re.findall(r"size mismatch for ([\w.]+)", str(exc))
        detail = f"shape mismatch in {_summarise(mismatched)}" if mismatched else str(exc)
        raise CheckpointError(
            f"{source}: does not fit the model ({type(model).__name__}): {detail.splitlines()[0]}"
        ) from None
