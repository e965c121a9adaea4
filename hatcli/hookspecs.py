"""The hooks a ``hat`` plugin implements. This module is the plugin author's reference.

Every registration hook receives a ``register`` callable (``hatcli.contracts.Register``)::

    register(name, factory, schema=None, help=None)

``name`` is what a spec writes as ``type:``; ``factory`` is called with the
component's parameters from the spec as keyword arguments; ``schema`` is the JSON
Schema (Draft 2020-12) of those parameters, used by ``hat validate``; ``help`` is a
one-line description shown by ``hat plugins``. A component whose name is not a string or
whose schema is not a valid JSON Schema object is skipped with a warning.

What each factory must return is written down in ``hatcli/contracts.py``, one class per
kind; ``docs/plugins.md`` has an example of each. A hook that raises is warned about,
naming the plugin, and everything it registered in that hook is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import typer

    from hatcli.contracts import Register

hookspec = HookspecMarker("hat")
hookimpl = HookimplMarker("hat")


@hookspec
def hat_register_models(register: Register) -> None:
    """Register models: ``factory(**params) -> torch.nn.Module``; to be converted by
    ``Float2QAT`` it is a ``hatcli.contracts.Quantizable`` (``fuse_model``,
    ``set_qconfig``; ``hatcli.nn.quantizable.QuantizableModel`` gives both)."""


@hookspec
def hat_register_datasets(register: Register) -> None:
    """Register datasets: ``factory(**params) -> Dataset`` of ``(input, target)`` pairs.

    The spec's ``batch_size``, ``shuffle``, ``drop_last``, ``num_workers``,
    ``pin_memory``, ``persistent_workers``, ``prefetch_factor`` and ``transforms`` go to
    the DataLoader, not to the factory. A dataset may set ``source`` (a path) to be named
    in messages about its data, and raises ``hatcli.errors.DataError`` for unreadable
    items. An image dataset may define ``image(index) -> (PIL.Image.Image, target)``: a
    split with ``transforms`` then gets the image before any conversion to a tensor.
    """


@hookspec
def hat_register_transforms(register: Register) -> None:
    """Register per-sample data transforms (a split's ``transforms`` list):
    ``factory(**params) -> hatcli.engine.transforms.Transform``, called as
    ``transform(sample, generator)`` on a PIL image or a tensor; every random draw comes
    from ``generator`` (seeded per sample from the seed, epoch, rank and index)."""


@hookspec
def hat_register_converters(register: Register) -> None:
    """Register model conversion steps: ``factory(**params) -> hatcli.contracts.Converter``,
    called as ``converter(model, context) -> model``."""


@hookspec
def hat_register_callbacks(register: Register) -> None:
    """Register training callbacks: ``factory(**params) -> hatcli.contracts.Callback``."""


@hookspec
def hat_register_trainers(register: Register) -> None:
    """Register training loops: ``factory(**params) -> hatcli.contracts.Trainer``."""


@hookspec
def hat_register_metrics(register: Register) -> None:
    """Register validation metrics: ``factory(**params) -> hatcli.contracts.Metric``, for
    ``Validation``'s ``metrics`` list."""


@hookspec
def hat_register_optimizers(register: Register) -> None:
    """Register optimizers: ``factory(parameters, **params) -> torch.optim.Optimizer``."""


@hookspec
def hat_register_lr_schedulers(register: Register) -> None:
    """Register LR schedulers: ``factory(optimizer, **params)`` (torch's scheduler protocol).

    A schema property ``T_max`` or ``total_steps`` that the spec leaves out is set to the
    stage's length (epochs, or steps with ``interval: step``)."""


@hookspec
def hat_register_losses(register: Register) -> None:
    """Register losses: ``factory(**params) -> nn.Module`` called as ``loss(outputs, targets)``."""


@hookspec
def hat_register_batch_processors(register: Register) -> None:
    """Register batch processors (HAT's ``batch_processor``): ``factory(**params) ->
    hatcli.engine.batch_processor.BatchProcessor``, whose ``loss(...)`` turns a training
    batch into its loss."""


@hookspec
def hat_register_exporters(register: Register) -> None:
    """Register formats of ``hat export --format NAME``: ``factory() -> hatcli.export.Exporter``
    (called with no arguments; see ``hatcli/export/exporter.py``)."""


@hookspec
def hat_register_commands(app: typer.Typer) -> None:
    """Add commands (``app.command``) or groups (``app.add_typer``) to the ``hat`` Typer ``app``.

    A command or group named like a built-in command, or like one an earlier plugin
    added, is skipped with a warning; so is everything the plugin added when this raises.
    """
