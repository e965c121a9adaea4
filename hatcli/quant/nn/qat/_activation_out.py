"""Shared construction of QAT modules that only quantize their output."""

from __future__ import annotations

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.qconfig import QConfig


def output_fake_quant(name: str, qconfig: QConfig | None) -> FakeQuantize:
    """The output FakeQuantize for a module that must produce quantized values."""
    if qconfig is None or qconfig.activation is None:
        raise ValueError(f"{name} produces quantized activations: its qconfig needs one")
    return qconfig.activation()
