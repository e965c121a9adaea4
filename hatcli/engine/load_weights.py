"""Putting a checkpoint's weights into a model."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from hatcli.errors import CheckpointError
from hatcli.quant.legacy import with_absorbed_flags


def _summarise(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_weights(
    model: nn.Module,
    checkpoint: dict[str, Any],
    source: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> None:
    """Load ``checkpoint['state_dict']`` into ``model``; a mismatch names the tensors.

    By default every model tensor must be in the checkpoint and nothing else; HAT's
    ``allow_miss`` and ``ignore_extra`` relax one side each.

    A module's own state loads first and may reshape it (a QAT block absorbs the BN the
    saved one had absorbed), so the tensors are matched against the model as loaded.
    """
    try:
        # hat 0.1 kept the absorbed BN in a list beside the state dict.
        state = with_absorbed_flags(
            model, checkpoint["state_dict"], list(checkpoint.get("absorbed_bn") or [])
        )
    except LookupError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        mismatched = re.findall(r"size mismatch for ([\w.]+)", str(exc))
        detail = f"shape mismatch in {_summarise(mismatched)}" if mismatched else str(exc)
        raise CheckpointError(
            f"{source}: does not fit the model ({type(model).__name__}): {detail.splitlines()[0]}"
        ) from None
    missing = [] if allow_missing else result.missing_keys
    unexpected = [] if allow_unexpected else result.unexpected_keys
    if missing or unexpected:
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
            "allow_miss / ignore_extra (strict: false for both)"
        )
