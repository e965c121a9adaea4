"""torch's own optimizers, LR schedulers and losses, by their class names.

Their parameter schemas are read off the constructors' signatures, so a spec's
``optimizer: {type: SGD, lr: 0.1, momentum: 0.9}`` is checked like any component.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from hatcli.hookspecs import hookimpl

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")
LR_SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "OneCycleLR",
    "LinearLR",
    "ConstantLR",
    "PolynomialLR",
    "CosineAnnealingWarmRestarts",
)
LOSSES = (
    "CrossEntropyLoss",
    "NLLLoss",
    "MSELoss",
    "L1Loss",
    "SmoothL1Loss",
    "HuberLoss",
    "BCEWithLogitsLoss",
)
# Not settable from a spec: the objects hat passes itself, and implementation switches.
SKIPPED = {
    "self",
    "params",
    "optimizer",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "last_epoch",
    "verbose",
    "size_average",
    "reduce",
}
# Filled in by the engine from the stage's length when the spec leaves them out.
FILLED_BY_ENGINE = {"T_max", "total_steps", "total_iters"}
SCHEDULER_INTERVAL = {
    "interval": {
        "enum": ["epoch", "step"],
        "default": "epoch",
        "description": "Step the scheduler after every epoch or every optimizer step.",
    }
}


def _json_type(annotation: Any) -> dict[str, Any] | None:
    """A JSON Schema for a constructor annotation, or None if a spec cannot set it."""
    if isinstance(annotation, type):
        annotation = annotation.__name__
    text = str(annotation).replace("typing.", "").replace("collections.abc.", "")
    if text.startswith("Literal"):
        return {"enum": [s.strip().strip("'\"") for s in text[8:-1].split(",")]}
    element = {"type": "number"} if "float" in text else {"type": "integer"}
    if any(word in text for word in ("tuple", "list", "Iterable", "Sequence")):
        array = {"type": "array", "items": element}
        scalar_too = text.split("|")[0].strip() in ("float", "int")
        return {"anyOf": [element, array]} if scalar_too else array
    if "float" in text:
        return {"type": "number"}
    if "int" in text and "Tensor" not in text:
        return {"type": "integer"}
    if text.startswith("bool"):
        return {"type": "boolean"}
    if text.startswith("str"):
        return {"type": "string"}
    return None


def signature_schema(cls: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema of the keyword arguments of ``cls`` that a spec can set."""
    properties: dict[str, Any] = dict(extra or {})
    required: list[str] = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in SKIPPED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _json_type(param.annotation)
        if schema is None:
            continue
        if param.default is param.empty:
            if name not in FILLED_BY_ENGINE:
                required.append(name)
        elif isinstance(param.default, (bool, int, float, str)):
            schema["default"] = param.default
        properties[name] = schema
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    out["properties"] = properties
    if required:
        out["required"] = required
    return out


def _first_line(cls: type) -> str:
    return f"torch {cls.__module__}.{cls.__name__}"


@hookimpl
def hat_register_optimizers(register: Any) -> None:
    for name in OPTIMIZERS:
        cls = getattr(torch.optim, name)
        register(name, cls, signature_schema(cls), _first_line(cls))


@hookimpl
def hat_register_lr_schedulers(register: Any) -> None:
    for name in LR_SCHEDULERS:
        cls = getattr(torch.optim.lr_scheduler, name)
        register(name, cls, signature_schema(cls, SCHEDULER_INTERVAL), _first_line(cls))


@hookimpl
def hat_register_losses(register: Any) -> None:
    for name in LOSSES:
        cls = getattr(nn, name)
        register(name, cls, signature_schema(cls), _first_line(cls))
