"""Integer elementwise functions: a 256-entry int8 lookup table per input scale.

``table[q + 128]`` is the output fake-quant's integer for ``fn(q * s_in)``, with
``q * s_in`` the float32 value ``QTensor.dequantize`` gives and the rounding of the
QAT fake quantization (``fake_quantize_with_mask``), so the table is the QAT module's
computation on each of the 256 inputs an int8 activation can hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hatcli.quant.fake_quantize import fake_quantize_with_mask
from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN
from hatcli.quant.nn import qat
from hatcli.quant.nn.qat.elementwise import function_name
from hatcli.quant.nn.quantized import lookup
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.quant.qtensor import QTensor


class Elementwise(IntegerModule):
    """``table[q + 128]``; the table is built from ``fn`` once per input scale."""

    output_scale: torch.Tensor

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        output_scale: torch.Tensor,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = fn  # an nn.Module becomes the child ``fn``
        self.name = name if name is not None else function_name(fn)
        self.register_buffer("output_scale", output_scale.detach().float().reshape(()))
        self._tables: dict[tuple[float, float], torch.Tensor] = {}
        self._by_byte: dict[tuple[float, float], torch.Tensor] = {}

    @classmethod
    def from_qat(cls, mod: qat.Elementwise) -> Elementwise:
        return cls(mod.fn, mod.activation_post_process.scale, mod.name)

    def table(self, s_in: float) -> torch.Tensor:
        """The int8 outputs of the 256 int8 inputs ``-128 .. 127`` at input scale ``s_in``."""
        key = (s_in, float(self.output_scale))
        cached = self._tables.get(key)
        if cached is not None:
            return cached
        q = torch.arange(QUANT_MIN, QUANT_MAX + 1, dtype=torch.int8)
        values = QTensor(q, torch.tensor(s_in, dtype=torch.float32)).dequantize()
        device = self._fn_device()
        s_out = self.output_scale.to(device)
        with torch.no_grad():
            y = self.fn(values.to(device)).float()
            fq, _ = fake_quantize_with_mask(y, s_out, QUANT_MIN, QUANT_MAX)
        # fq is k * s_out in float32 with |k| <= 128: dividing recovers k exactly.
        table = torch.round(fq / s_out).to(torch.int8).cpu()
        self._tables[key] = table
        return table

    def _fn_device(self) -> torch.device:
        """Where ``fn`` keeps its tensors, if it has any (the table is built there)."""
        if isinstance(self.fn, nn.Module):
            for t in (*self.fn.parameters(), *self.fn.buffers()):
                return t.device
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        key = (s_in, float(self.output_scale))
        by_byte = self._by_byte.get(key)
        if by_byte is None:
            by_byte = self._by_byte[key] = lookup.by_uint8(self.table(s_in))
        return QTensor(lookup.lookup(by_byte, xi), self.output_scale)

    def extra_repr(self) -> str:
        return "" if isinstance(self.fn, nn.Module) else f"fn={self.name}"
