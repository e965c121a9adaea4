"""QAT resizing (``F.interpolate``): nearest picks input values, so it keeps the input's
scale; bilinear blends them, so its output is fake-quantized."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import QATTensor, input_scale, plain
from hatcli.quant.qconfig import QConfig

Size = int | Sequence[int]
ScaleFactor = float | Sequence[float]
MODES = ("nearest", "bilinear")


def check_resize(mode: str, align_corners: bool | None) -> None:
    """Refuse what the quantized resize does not implement."""
    if mode not in MODES:
        raise ValueError(f"quantized interpolation supports modes {MODES}, not {mode!r}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("align_corners is only for bilinear interpolation")


def resize_repr(
    size: Size | None, scale_factor: ScaleFactor | None, mode: str, align_corners: bool | None
) -> str:
    where = f"size={size}" if size is not None else f"scale_factor={scale_factor}"
    corners = f", align_corners={align_corners}" if mode == "bilinear" else ""
    return f"{where}, mode={mode}{corners}"


class Interpolate(IntegerEval):
    """``F.interpolate(x, size, scale_factor, mode, align_corners)``; nearest keeps the
    input's scale, bilinear is ``FQ(...)`` (its qconfig needs an activation). ``size``
    may instead come with each call (``forward(x, size)``), e.g. another tensor's shape."""

    def __init__(
        self,
        size: Size | None = None,
        scale_factor: ScaleFactor | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        qconfig: QConfig | None = None,
    ) -> None:
        super().__init__()
        check_resize(mode, align_corners)
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.qconfig = qconfig
        self.activation_post_process = (
            output_fake_quant("bilinear Interpolate", qconfig) if mode == "bilinear" else None
        )

    @classmethod
    def from_float(cls, mod: nn.Upsample, qconfig: QConfig | None = None) -> Interpolate:
        """From ``nn.Upsample`` and its subclasses (``UpsamplingNearest2d``,
        ``UpsamplingBilinear2d``: bilinear with ``align_corners=True``)."""
        if mod.recompute_scale_factor:
            raise ValueError("quantized Upsample does not recompute its scale factor")
        qconfig = qconfig if qconfig is not None else getattr(mod, "qconfig", None)
        return cls(mod.size, mod.scale_factor, mod.mode, mod.align_corners, qconfig)

    def options(self, size: Size | None = None) -> dict[str, Any]:
        """The arguments of ``F.interpolate`` (after the input) for a call with ``size``."""
        size = size if size is not None else self.size
        if size is not None:
            return {"size": size, "mode": self.mode, "align_corners": self.align_corners}
        return {
            "scale_factor": self.scale_factor,
            "mode": self.mode,
            "align_corners": self.align_corners,
        }

    def forward(self, x: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        opts = self.options(size)
        app = self.activation_post_process
        if app is None:
            y = F.interpolate(plain(x), **opts)
            scale = input_scale(x)
            return y if scale is None else QATTensor.wrap(y, scale)
        return self.exact_eval(
            lambda: app(F.interpolate(plain(x), **opts)), [x], lambda t, q: t(q, size)
        )

    def extra_repr(self) -> str:
        return resize_repr(self.size, self.scale_factor, self.mode, self.align_corners)
