"""QAT pooling. Max pooling picks values already on its input's grid, so it keeps the
input's scale; averages leave the grid, so they get an output fake-quant."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.common_types import _size_2_t

from hatcli.quant.nn.qat._activation_out import output_fake_quant
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import QATTensor, input_scale, plain
from hatcli.quant.qconfig import QConfig


class AdaptiveAvgPool2d(IntegerEval):
    """``FQ(adaptive_avg_pool2d(x))``."""

    def __init__(self, output_size: int | tuple[int, int], qconfig: QConfig) -> None:
        super().__init__()
        self.output_size = output_size
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("AdaptiveAvgPool2d", qconfig)

    @classmethod
    def from_float(
        cls, mod: nn.AdaptiveAvgPool2d, qconfig: QConfig | None = None
    ) -> AdaptiveAvgPool2d:
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        return cls(mod.output_size, qconfig)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(F.adaptive_avg_pool2d(x, self.output_size)), [x])


class MaxPool2d(nn.Module):
    """``max_pool2d(x)`` with the input's scale: the maximum of values ``k * s`` is
    ``max(k) * s``, so the integer max pool gives the same values."""

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        qconfig: QConfig | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.qconfig = qconfig

    @classmethod
    def from_float(cls, mod: nn.MaxPool2d, qconfig: QConfig | None = None) -> MaxPool2d:
        if mod.return_indices:
            raise ValueError("a quantized MaxPool2d cannot return indices")
        qconfig = qconfig if qconfig is not None else getattr(mod, "qconfig", None)
        geometry = (mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        return cls(*geometry, qconfig=qconfig)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(
            plain(x), self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        scale = input_scale(x)
        return y if scale is None else QATTensor.wrap(y, scale)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(IntegerEval):
    """``FQ(avg_pool2d(x))``, with torch's divisor rule."""

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        qconfig: QConfig | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override
        self.qconfig = qconfig
        self.activation_post_process = output_fake_quant("AvgPool2d", qconfig)

    @classmethod
    def from_float(cls, mod: nn.AvgPool2d, qconfig: QConfig | None = None) -> AvgPool2d:
        # prepare_qat swaps only modules whose qconfig is set.
        qconfig = qconfig if qconfig is not None else cast(QConfig, mod.qconfig)
        return cls(
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.ceil_mode,
            mod.count_include_pad,
            mod.divisor_override,
            qconfig=qconfig,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        return self.exact_eval(lambda: app(self.pool(plain(x))), [x])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The float average pooling this module quantizes."""
        return F.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}, "
            f"divisor_override={self.divisor_override}"
        )
