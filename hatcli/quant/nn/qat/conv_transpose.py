"""QAT transposed convolution: ``FQ(conv_transpose2d(x, FQ(W)) + b)``, weights per output
channel, the bias on the int32 grid of ``s_in * s_w``.

A transposed weight is laid out [in, out / groups, kh, kw]: the output channels are not
its first axis. The weight fake-quant sees it in the conv layout [out, in / groups, kh,
kw] (``to_conv_layout``), where they are, so the qconfig's usual per-channel weight
fake-quant (axis 0) quantizes per output channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hatcli.quant.fake_quantize import fake_quantize_bias
from hatcli.quant.nn.qat.conv_bn import _qconfig_of
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import input_scale, plain
from hatcli.quant.qconfig import QConfig


def to_conv_layout(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[in, out / groups, kh, kw] -> [out, in / groups, kh, kw], channel order kept."""
    cin, cout_g, kh, kw = weight.shape
    w = weight.reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * cout_g, cin // groups, kh, kw)


def to_transposed_layout(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of ``to_conv_layout``."""
    cout, cin_g, kh, kw = weight.shape
    w = weight.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * cin_g, cout // groups, kh, kw)


class ConvTranspose2d(IntegerEval):
    """QAT ``nn.ConvTranspose2d``, sharing the float module's Parameters; without an
    output fake-quant (``qconfig.activation`` None) the output stays float (int32 in the
    integer model)."""

    def __init__(self, conv: nn.ConvTranspose2d, qconfig: QConfig) -> None:
        super().__init__()
        assert qconfig.weight is not None
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("quantized ConvTranspose2d supports numeric zero padding only")
        self.qconfig = qconfig
        self.conv = conv
        self.weight_fake_quant = qconfig.weight()
        self.activation_post_process = (
            qconfig.activation() if qconfig.activation is not None else None
        )

    @classmethod
    def from_float(cls, mod: nn.ConvTranspose2d, qconfig: QConfig | None = None) -> ConvTranspose2d:
        if type(mod) is not nn.ConvTranspose2d:
            raise TypeError(f"{cls.__name__}.from_float expects ConvTranspose2d")
        return cls(mod, _qconfig_of(mod, qconfig))

    def conv_layout_weight(self) -> torch.Tensor:
        """The float weight as [out, in / groups, kh, kw]."""
        return to_conv_layout(self.conv.weight, self.conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exact_eval(lambda: self._simulate(x), [x])

    def _simulate(self, x: torch.Tensor) -> torch.Tensor:
        conv, fq = self.conv, self.weight_fake_quant
        w = to_transposed_layout(fq(self.conv_layout_weight()), conv.groups)
        b = fake_quantize_bias(conv.bias, input_scale(x), fq.scale)
        y = F.conv_transpose2d(
            plain(x),
            w,
            b,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]  # not a string: checked at construction
            conv.output_padding,
            conv.groups,
            conv.dilation,
        )
        app = self.activation_post_process
        return app(y) if app is not None else y
