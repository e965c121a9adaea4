"""qat_mode: module-level state, str or enum, clear error for invalid values."""

from __future__ import annotations

import pytest

from hatcli.quant import QATMode, get_qat_mode, set_qat_mode


def test_default_is_fuse_bn_and_values_match_hat() -> None:
    assert get_qat_mode() is QATMode.FuseBN
    assert [m.value for m in QATMode] == ["fuse_bn", "with_bn", "with_bn_reverse_fold"]


@pytest.mark.parametrize("mode", ["with_bn", QATMode.WithBNReverseFold, "fuse_bn"])
def test_set_accepts_str_and_enum(mode: str | QATMode) -> None:
    set_qat_mode(mode)
    assert get_qat_mode() == mode
    assert isinstance(get_qat_mode(), QATMode)


def test_invalid_mode_lists_valid_values() -> None:
    with pytest.raises(ValueError, match="fuse_bn, with_bn, with_bn_reverse_fold"):
        set_qat_mode("fold_later")
    assert get_qat_mode() is QATMode.FuseBN
