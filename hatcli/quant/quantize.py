"""prepare_qat (float -> QAT) and convert (QAT -> integer): walk the model, swap by the
tables in ``mappings``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

from torch import nn

from hatcli.quant.mappings import FLOAT_TO_QAT, QAT_TO_INTEGER
from hatcli.quant.qat_mode import QATMode, set_qat_mode
from hatcli.quant.qconfig import QConfig


class QuantizationError(TypeError):
    """A module cannot be converted; the message names its path in the model."""


def propagate_qconfig_(module: nn.Module, qconfig: QConfig | None = None) -> None:
    """Give every submodule a ``qconfig``: its own if it set one (``None`` included,
    which keeps it float), else its parent's."""
    qconfig = getattr(module, "qconfig", qconfig)
    module.qconfig = qconfig
    for child in module.children():
        propagate_qconfig_(child, qconfig)


def _holds_weights(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters(recurse=False))


def _swap(
    module: nn.Module,
    path: str,
    table: Mapping[type[nn.Module], Callable[[nn.Module], nn.Module]],
    skip: Callable[[nn.Module], bool],
    stage: str,
) -> nn.Module:
    if not skip(module):
        factory = table.get(type(module))
        if factory is not None:
            return factory(module)
        if _holds_weights(module):
            raise QuantizationError(
                f"{path or '<model>'}: {type(module).__name__} holds weights but has no "
                f"{stage} version; fuse it into a supported block (see fuse_model) or set "
                "its qconfig to None to keep it float"
            )
    for name, child in list(module.named_children()):
        new = _swap(child, f"{path}.{name}" if path else name, table, skip, stage)
        if new is not child:
            setattr(module, name, new)
    return module


def prepare_qat(
    model: nn.Module,
    qat_mode: QATMode | str | None = None,
    inplace: bool = False,
    mapping: Mapping[type[nn.Module], type[nn.Module]] | None = None,
) -> nn.Module:
    """Float model -> QAT model.

    Sets the qat_mode (when given), propagates ``qconfig`` from parents to children, and
    swaps each module with a non-None qconfig by ``FLOAT_TO_QAT`` (``mapping`` overrides).
    QAT modules share the float model's Parameters unless BN had to be folded.
    Call ``fuse_model()`` and ``set_qconfig()`` first.
    """
    if qat_mode is not None:
        set_qat_mode(qat_mode)
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    table = {k: v.from_float for k, v in {**FLOAT_TO_QAT, **(mapping or {})}.items()}
    return _swap(model, "", table, lambda m: getattr(m, "qconfig", None) is None, "QAT")


def convert(
    model: nn.Module,
    inplace: bool = False,
    mapping: Mapping[type[nn.Module], Callable[[nn.Module], nn.Module]] | None = None,
) -> nn.Module:
    """QAT model -> integer model by ``QAT_TO_INTEGER``; float parts without a qconfig
    stay float. BN still present in with-BN QAT modules is absorbed exactly."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    table = {**QAT_TO_INTEGER, **(mapping or {})}
    qat_types = set(table)

    def keep_float(m: nn.Module) -> bool:
        return type(m) not in qat_types and getattr(m, "qconfig", None) is None

    return _swap(model, "", table, keep_float, "integer")
