"""qat_mode: whether QAT trains with BatchNorm and how it is absorbed.

A QAT model carries its own mode (``prepare_qat(model, qat_mode)`` stores it on the QAT
conv-BN modules). ``set_qat_mode``/``get_qat_mode`` remain for HAT's API: the mode used
when ``prepare_qat`` or a ``from_float`` is not given one.
"""

from __future__ import annotations

from enum import Enum


class QATMode(str, Enum):  # noqa: UP042 (StrEnum needs Python 3.11)
    """How conv-BN blocks are trained: BN folded first, or kept (optionally reverse-folded)."""

    FuseBN = "fuse_bn"
    WithBN = "with_bn"
    WithBNReverseFold = "with_bn_reverse_fold"


WITH_BN_MODES = frozenset({QATMode.WithBN.value, QATMode.WithBNReverseFold.value})
"""The modes that train with BN, which ``FuseBN`` absorbs during QAT."""


def fuse_bn_mode_problem(mode: str) -> str | None:
    """Why ``FuseBN`` cannot run under ``mode``, or ``None`` when it can."""
    if mode in WITH_BN_MODES:
        return None
    return (
        f"FuseBN needs qat_mode with_bn or with_bn_reverse_fold (this stage uses {mode}, "
        "where BN is already folded before QAT)"
    )


_qat_mode: QATMode = QATMode.FuseBN


def get_qat_mode() -> QATMode:
    """The mode ``prepare_qat`` uses when given none (``fuse_bn`` unless set)."""
    return _qat_mode


def set_qat_mode(mode: QATMode | str) -> None:
    """Set the mode ``prepare_qat`` and the QAT conv-BN modules' ``from_float`` use when
    given none (HAT's API); a model already prepared keeps its own."""
    global _qat_mode
    try:
        _qat_mode = QATMode(mode)
    except ValueError:
        valid = ", ".join(m.value for m in QATMode)
        raise ValueError(f"invalid qat_mode {mode!r}; valid values: {valid}") from None
