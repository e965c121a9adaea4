"""The process-wide qat_mode: whether QAT trains with BatchNorm and how it is absorbed."""

from __future__ import annotations

from enum import Enum


class QATMode(str, Enum):  # noqa: UP042 (StrEnum needs Python 3.11)
    """How conv-BN blocks are trained: BN folded first, or kept (optionally reverse-folded)."""

    FuseBN = "fuse_bn"
    WithBN = "with_bn"
    WithBNReverseFold = "with_bn_reverse_fold"


_qat_mode: QATMode = QATMode.FuseBN


def get_qat_mode() -> QATMode:
    """Return the current qat_mode (``fuse_bn`` unless set)."""
    return _qat_mode


def set_qat_mode(mode: QATMode | str) -> None:
    """Set the qat_mode read by ``fuse_model()`` and by the QAT conv-BN modules' ``from_float``."""
    global _qat_mode
    try:
        _qat_mode = QATMode(mode)
    except ValueError:
        valid = ", ".join(m.value for m in QATMode)
        raise ValueError(f"invalid qat_mode {mode!r}; valid values: {valid}") from None
