"""The model convert pipeline: converters applied in order to the freshly built model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from hatcli.spec import defaults
from hatcli.spec.loader import JsonPath, Positions
from hatcli.spec.spec import StageSpec


def stage_qat_mode(stage: StageSpec) -> str:
    """The qat_mode the stage's ``model_convert_pipeline`` gives its converters."""
    pipeline = stage.get("model_convert_pipeline") or {}
    return str(pipeline.get("qat_mode", defaults.QAT_MODE))


@dataclass
class ConvertContext:
    """What converters share: the stage, its qat_mode, and what earlier converters found."""

    stage: str
    qat_mode: str
    positions: Positions
    path: JsonPath = ()
    qconfig: dict[str, Any] | None = None
    """The pipeline's per-module ``qconfig`` section (``hatcli.quant.qconfig_spec``)."""
    qconfig_path: JsonPath = ()
    loaded_checkpoint: dict[str, Any] | None = None
    loaded_from: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Converter(Protocol):
    """What a ``hat_register_converters`` factory returns: one step of a stage's
    ``model_convert_pipeline``. Any callable of this shape is one (a class with
    ``__call__``, a function, a ``functools.partial``)."""

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        """The model as the previous step left it, changed in place or replaced; return
        the model the next step gets. ``context`` tells the stage and its ``qat_mode``
        and carries what steps tell each other (``loaded_checkpoint``, ``notes``). Raise
        ``hatcli.errors.InputError``, one line naming the step, for a model or setting
        this step cannot take: hat prints it and exits with status 2."""
        ...
