"""Integer transposed convolution: int8 input and weights, exact integer accumulation,
int32 bias, requantized per output channel (or kept int32 without an output scale).

The accumulation is ``conv_transpose2d`` in float64 of the integers: every product and
partial sum is an integer below ``128 * 128 * taps`` < 2**53, so any summation order
gives the exact sum. (cuDNN, which may pick FFT or Winograd algorithms, is turned off.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hatcli.quant.nn import qat
from hatcli.quant.nn.qat.conv_transpose import to_transposed_layout
from hatcli.quant.nn.quantized.requantize import requantize
from hatcli.quant.nn.quantized.weighted import WeightedIntegerModule, integer_weight
from hatcli.quant.qtensor import QTensor


class ConvTranspose2d(WeightedIntegerModule):
    """``weight`` is kept in the conv layout [out, in / groups, kh, kw] (output channels
    first, as ``WeightedIntegerModule`` computes bounds and biases per output channel)."""

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor,
        output_scale: torch.Tensor | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        output_padding: tuple[int, int] = (0, 0),
        groups: int = 1,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__(weight, weight_scale, bias, output_scale)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation

    @classmethod
    def from_qat(cls, mod: qat.ConvTranspose2d) -> ConvTranspose2d:
        conv = mod.conv
        with torch.no_grad():
            w_int, w_scale = integer_weight(mod.weight_fake_quant, mod.conv_layout_weight())
            bias = conv.bias if conv.bias is not None else torch.zeros(w_int.shape[0])
            app = mod.activation_post_process
            out_scale = app.scale.detach() if app is not None else None
        geometry = (conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation)
        return cls(w_int, w_scale, bias.detach(), out_scale, *geometry)  # type: ignore[arg-type]

    def accumulate(self, xi: torch.Tensor) -> torch.Tensor:
        """The exact accumulator of int8 NCHW input, float64 integers [N, O, OH, OW]."""
        w = to_transposed_layout(self.weight, self.groups).double()
        with torch.backends.cudnn.flags(enabled=False):
            return F.conv_transpose2d(
                xi.double(),
                w,
                None,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )

    def forward(self, x: torch.Tensor) -> QTensor:
        xi, s_in = self._int8_input(x)
        acc = self.accumulate(xi)
        p = self.requant_params(s_in)
        bias = _nchw(p.bias)
        if p.out_scale is not None:
            return QTensor(acc.to(torch.int32) + bias, p.out_scale, axis=1)
        assert p.shift is not None and self.output_scale is not None
        m, shift = _nchw(p.mults[0]), _nchw(p.shift)
        q = requantize([(acc, m)], shift, self.qmin, self.qmax, bound=p.bound, offset=bias)
        return QTensor(q, self.output_scale)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (
            f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, "
            f"padding={self.padding}, output_padding={self.output_padding}, "
            f"groups={self.groups}, dilation={self.dilation}"
        )


def _nchw(per_channel: torch.Tensor) -> torch.Tensor:
    return per_channel.reshape(1, -1, 1, 1)
