"""What a plugin's factories must return: one contract per kind of component.

``hatcli/hookspecs.py`` lists the hooks a plugin implements; each registration hook
gets a ``Register`` and calls it with a factory. This module says what calling that
factory must give, kind by kind (``params`` are the component's keys in the spec):

=================  ==================================  ====================================
kind (hook)        hat calls                           and gets
=================  ==================================  ====================================
models             ``factory(**params)``               ``torch.nn.Module``; a ``Quantizable``
                                                       one to go through ``Float2QAT``
datasets           ``factory(**params)``               ``torch.utils.data.Dataset`` of
                                                       ``(input, target)`` pairs
converters         ``factory(**params)``               ``Converter``
callbacks          ``factory(**params)``               ``Callback`` (a subclass)
trainers           ``factory(**params)``               ``Trainer`` (a subclass)
metrics            ``factory(**params)``               ``Metric`` (a subclass)
optimizers         ``factory(parameters, **params)``   ``torch.optim.Optimizer``
lr_schedulers      ``factory(optimizer, **params)``    a torch LR scheduler (``step()``,
                                                       ``state_dict()``)
losses             ``factory(**params)``               ``nn.Module``, ``loss(outputs, targets)``
=================  ==================================  ====================================

A factory that raises ``ValueError``, ``TypeError``, ``KeyError`` or
``FileNotFoundError`` gets its message reported at the component's place in the spec
(``file:line:col``); a ``hatcli.errors.InputError`` is reported as it is. Say what is
wrong in one line. ``docs/plugins.md`` has an example of each.

This module lives beside ``hookspecs.py``, not in ``hatcli.engine``: the two are what a
plugin imports, so the engine's modules can move without breaking a plugin. The base
classes themselves stay next to the code that calls them; nothing in the engine imports
this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.engine.convert import ConvertContext, Converter
from hatcli.engine.loop import Trainer
from hatcli.engine.metric import Metric

__all__ = [
    "Callback",
    "ConvertContext",
    "Converter",
    "LoopContext",
    "Metric",
    "Quantizable",
    "Register",
    "Trainer",
]


class Register(Protocol):
    """The ``register`` callable every ``hat_register_*`` hook (except commands) gets."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        schema: dict[str, Any] | None = None,
        help: str | None = None,
    ) -> None:
        """Offer one component.

        ``name`` is what a spec writes as ``type:`` (unique within the kind over every
        installed plugin: a second plugin giving it is an error naming both).
        ``factory`` is called with the component's parameters from the spec as keyword
        arguments (see the table above for what it must return). ``schema`` is the JSON
        Schema (Draft 2020-12) of those parameters: ``hat validate`` checks them with it,
        with "did you mean" for misspelt keys, and ``hat schema`` publishes it; without
        one any parameters pass to the factory. ``help`` is the one line ``hat plugins``
        shows. A name that is not a non-empty string or a schema that is not a valid JSON
        Schema object is warned about and that one component skipped.
        """


@runtime_checkable
class Quantizable(Protocol):
    """A model ``Float2QAT`` can convert: HAT's two methods on the outermost module.

    ``hatcli.nn.quantizable.QuantizableModel`` implements both for the usual model;
    a model may write them itself.
    """

    def fuse_model(self) -> None:
        """Fuse every conv-BN(-ReLU) block of the model, children included: hat calls
        only the outermost module's ``fuse_model()`` (``hatcli.nn.fuse_children`` walks
        into the children)."""

    def set_qconfig(self) -> None:
        """Set ``qconfig`` on the model (inherited by its children when QAT is
        prepared), another on layers that differ (an int32 output layer), and ``None`` on
        parts that must stay float (a loss, a post-process)."""
