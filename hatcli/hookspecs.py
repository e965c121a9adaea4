"""The hooks a ``hat`` plugin implements. This module is the plugin author's reference.

Every registration hook receives a ``register`` callable::

    register(name, factory, schema=None, help=None)

``name`` is what a spec writes as ``type:``; ``factory`` is called with the
component's parameters from the spec as keyword arguments; ``schema`` is the JSON
Schema (Draft 2020-12) of those parameters, used by ``hat validate``; ``help`` is a
one-line description shown by ``hat plugins``. A component whose name is not a string or
whose schema is not a valid JSON Schema object is skipped with a warning.
"""

from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("hat")
hookimpl = HookimplMarker("hat")


@hookspec
def hat_register_models(register: Any) -> None:
    """Register model factories: ``factory(**params) -> torch.nn.Module``."""


@hookspec
def hat_register_datasets(register: Any) -> None:
    """Register datasets: ``factory(**params) -> Dataset`` of ``(input, target)`` pairs."""


@hookspec
def hat_register_converters(register: Any) -> None:
    """Register model conversion steps: ``factory(**params)(model, context) -> model``."""


@hookspec
def hat_register_callbacks(register: Any) -> None:
    """Register training callbacks: ``factory(**params) -> hatcli.Callback``."""


@hookspec
def hat_register_trainers(register: Any) -> None:
    """Register training loops: ``factory(**params) -> hatcli.engine.loop.Trainer``-like object."""


@hookspec
def hat_register_metrics(register: Any) -> None:
    """Register validation metrics: ``factory(**params) -> hatcli.Metric``."""


@hookspec
def hat_register_optimizers(register: Any) -> None:
    """Register optimizers: ``factory(parameters, **params) -> torch.optim.Optimizer``."""


@hookspec
def hat_register_lr_schedulers(register: Any) -> None:
    """Register LR schedulers: ``factory(optimizer, **params)`` (torch's scheduler protocol)."""


@hookspec
def hat_register_losses(register: Any) -> None:
    """Register losses: ``factory(**params) -> nn.Module`` called as ``loss(outputs, targets)``."""


@hookspec
def hat_register_commands(app: Any) -> None:
    """Add commands (``app.command``) or groups (``app.add_typer``) to the ``hat`` Typer ``app``.

    A command or group named like a built-in command, or like one an earlier plugin
    added, is skipped with a warning; so is everything the plugin added when this raises.
    """
