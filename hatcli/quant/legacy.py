"""State dicts of QAT models saved by hat 0.1, before the QAT conv-BN modules kept
"BN absorbed" as their own extra state.

Those checkpoints list the sub-modules ``FuseBN`` had absorbed in a top-level
``absorbed_bn`` and have no ``_extra_state`` entries; ``with_absorbed_flags`` turns the
list into the entries, so they load with ``load_state_dict`` like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hatcli.quant.nn.qat.conv_bn import Conv2d as QATConv2d

_EXTRA_STATE = "_extra_state"  # torch's key suffix for get_extra_state()


def _inside(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def with_absorbed_flags(
    model: nn.Module, state_dict: Mapping[str, Any], absorbed: Sequence[str]
) -> dict[str, Any]:
    """``state_dict`` with an extra-state entry for each QAT conv-BN module of ``model``
    that has none: absorbed if the module is one of ``absorbed`` (dotted names, as hat 0.1
    saved them) or inside one. Entries already there are kept: a state dict saved since
    then comes back unchanged. Raises ``LookupError`` for a name ``model`` does not have.
    """
    modules = dict(model.named_modules())
    for root in absorbed:
        if root not in modules:
            raise LookupError(
                f"was saved with the BN of {root!r} absorbed, but the model "
                f"({type(model).__name__}) has no such sub-module"
            )
    upgraded = dict(state_dict)
    for name, module in modules.items():
        key = f"{name}.{_EXTRA_STATE}" if name else _EXTRA_STATE
        if isinstance(module, QATConv2d) and key not in upgraded:
            upgraded[key] = torch.tensor(any(_inside(name, root) for root in absorbed))
    return upgraded
