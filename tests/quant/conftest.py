"""Fixtures for the quantization tests (the shared models live in quant_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from quant_fixtures import digits_data

from hatcli.quant import get_qat_mode, set_qat_mode


@pytest.fixture(autouse=True)
def _restore_qat_mode() -> Iterator[None]:
    before = get_qat_mode()
    yield
    set_qat_mode(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: one thread is as fast, and immune to a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_data()
