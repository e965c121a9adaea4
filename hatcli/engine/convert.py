"""The model convert pipeline: converters applied in order to the freshly built model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from hatcli.spec.loader import JsonPath, Positions


@dataclass
class ConvertContext:
    """What converters share: the stage, its qat_mode, and what earlier converters found."""

    stage: str
    qat_mode: str
    positions: Positions
    path: JsonPath = ()
    loaded_checkpoint: dict[str, Any] | None = None
    loaded_from: str | None = None
    absorbed_bn: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


class Converter(Protocol):
    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module: ...
