"""prepare_qat (float -> QAT) and convert (QAT -> integer): walk the model, swap by the
tables in ``mappings``."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from hatcli.errors import InputError
from hatcli.quant.mappings import FLOAT_TO_QAT, QAT_TO_INTEGER
from hatcli.quant.qat_mode import QATMode, get_qat_mode
from hatcli.quant.qconfig import QConfig
from hatcli.quant.qtensor import QTensor


class QuantizationError(InputError, TypeError):
    """A module cannot be converted or run as converted; the message names its path in
    the model. An input error: hat reports it in one line and exits with status 2."""


def propagate_qconfig_(module: nn.Module, qconfig: QConfig | None = None) -> None:
    """Give every submodule a ``qconfig``: its own if it set one (``None`` included,
    which keeps it float), else its parent's."""
    qconfig = getattr(module, "qconfig", qconfig)
    module.qconfig = qconfig  # type: ignore[assignment]  # torch: __setattr__ is Tensor|Module
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


def _from_float(qat_type: type[nn.Module], mode: QATMode) -> Callable[[nn.Module], nn.Module]:
    """``qat_type.from_float``, given the mode if it takes one (as torch.ao's
    ``swap_module`` passes ``use_precomputed_fake_quant`` only where it is a parameter)."""
    from_float: Callable[..., nn.Module] = qat_type.from_float  # type: ignore[attr-defined]
    if "qat_mode" in inspect.signature(from_float).parameters:
        return functools.partial(from_float, qat_mode=mode)
    return from_float


def prepare_qat(
    model: nn.Module,
    qat_mode: QATMode | str | None = None,
    inplace: bool = False,
    mapping: Mapping[type[nn.Module], type[nn.Module]] | None = None,
) -> nn.Module:
    """Float model -> QAT model in ``qat_mode`` (HAT's ``get_qat_mode()`` if not given),
    which the QAT conv-BN modules keep: the model carries its mode, nothing global does.

    Propagates ``qconfig`` from parents to children, and swaps each module with a
    non-None qconfig by ``FLOAT_TO_QAT`` (``mapping`` overrides). QAT modules share the
    float model's Parameters unless BN is folded (``fuse_bn``). Call ``fuse_model()`` and
    ``set_qconfig()`` first.
    """
    mode = get_qat_mode() if qat_mode is None else QATMode(qat_mode)
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    merged = {**FLOAT_TO_QAT, **(mapping or {})}
    table = {k: _from_float(v, mode) for k, v in merged.items()}
    return _swap(model, "", table, lambda m: getattr(m, "qconfig", None) is None, "QAT")


def convert(
    model: nn.Module,
    inplace: bool = False,
    mapping: Mapping[type[nn.Module], Callable[[nn.Module], nn.Module]] | None = None,
) -> nn.Module:
    """QAT model -> integer model by ``QAT_TO_INTEGER``; float parts without a qconfig
    stay float (frozen). BN still present in with-BN QAT modules is absorbed exactly."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    table = {**QAT_TO_INTEGER, **(mapping or {})}
    qat_types = set(table)

    def keep_float(m: nn.Module) -> bool:
        return type(m) not in qat_types and getattr(m, "qconfig", None) is None

    if not keep_float(model):
        _guard_float_parts(model, "", keep_float, qat_types)
    integer = _swap(model, "", table, keep_float, "integer")
    # What stays float (a float island's LayerNorm) is frozen with the rest: the
    # integer model cannot train, and its stubs refuse inputs that need a gradient.
    for p in integer.parameters():
        p.requires_grad_(False)
    return integer


def _guard_float_parts(
    module: nn.Module,
    path: str,
    keep_float: Callable[[nn.Module], bool],
    qat_types: set[type[nn.Module]],
) -> None:
    """Give each float part with weights inside the quantized model, and no quantized op
    inside it, a check of its input (``RefuseQuantizedInput``): graph mode places stubs
    around such a part, but an eagerly prepared model whose qconfig keeps a conv float
    without them would hand it int8 tensors."""
    for name, child in module.named_children():
        child_path = f"{path}.{name}" if path else name
        holds_ops = any(type(m) in qat_types for m in child.modules())
        if not keep_float(child) or holds_ops:
            _guard_float_parts(child, child_path, keep_float, qat_types)
        elif any(True for _ in child.parameters()) and not any(
            isinstance(h, RefuseQuantizedInput) for h in child._forward_pre_hooks.values()
        ):
            child.register_forward_pre_hook(RefuseQuantizedInput(child_path))


class RefuseQuantizedInput:
    """Forward pre-hook: a float part of the integer model got an int8 input."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if any(isinstance(a, QTensor) for a in args):
            raise QuantizationError(
                f"{self.path} ({type(module).__name__}) is kept float but gets a quantized "
                "input: dequantize before it and quantize after it in the model "
                "(DeQuantStub, QuantStub), or prepare it with Float2QAT mode: graph, "
                "which places them"
            )
