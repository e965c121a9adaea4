"""QAT conv and conv-BN blocks; the qat_mode lives here.

With ``s = gamma / sqrt(running_var + eps)`` per output channel, ``FQ`` the weight's
per-channel fake-quantizer and ``post`` = (residual add) -> activation -> output FQ:

- BN folded (``fuse_bn``, or after ``fuse_norm()``): ``post(conv(x, FQ(W)) + b)``
- ``with_bn``: ``post(bn(conv(x, FQ(W)) + b))``
- ``with_bn_reverse_fold``: ``post(bn(conv(x, FQ(W * s)) / s + b))``; the weight scale is
  learned on ``W * s``, the weight BN absorption will produce, so absorbing is lossless.

Whether BN was absorbed mid-QAT is the module's extra state: a checkpoint restores it
with ``load_state_dict``, which absorbs BN again before the conv's weights load.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, cast

import torch
from torch import nn

import hatcli.nn as float_nn
from hatcli.quant.fake_quantize import FakeQuantize, fake_quantize_bias, fake_quantize_with_mask
from hatcli.quant.fuse_modules import bn_scale, channel_view, fold_bn_bias, fold_bn_into_conv_
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_mode import QATMode, get_qat_mode
from hatcli.quant.qat_tensor import input_scale, plain
from hatcli.quant.qconfig import QConfig


class _ReverseFoldWeight(torch.autograd.Function):
    """``FQ(W * s) / s`` per output channel: the weight the reverse fold convolves with.

    Autograd through the product, the fake quantization and the division would keep
    and write several weight-sized temporaries; here the backward is one masked copy
    and two per-channel dot products (``d/dW = mask``, ``d/ds = (mask * W - out) / s``).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        w: torch.Tensor,
        s: torch.Tensor,
        fq: FakeQuantize,
    ) -> torch.Tensor:
        s_view = channel_view(s, w.dim())
        v = w * s_view
        scale = fq.observe(v)
        inside = None
        if bool(fq.fake_quant_enabled):
            v, inside = fake_quantize_with_mask(
                v, channel_view(scale, w.dim()), fq.quant_min, fq.quant_max
            )
        out = v.div_(s_view)
        ctx.save_for_backward(w, s, out, inside)  # type: ignore[arg-type]  # None is accepted
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        w, s, out, inside = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_w = grad if inside is None else torch.where(inside, grad, 0.0)
        grad_s = None
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            rows = (w.shape[0], -1)
            grad_s = (
                torch.linalg.vecdot(grad_w.reshape(rows), w.reshape(rows))
                - torch.linalg.vecdot(grad.reshape(rows), out.reshape(rows))
            ) / s
        return grad_w if ctx.needs_input_grad[0] else None, grad_s, None  # type: ignore[attr-defined]


def _qconfig_of(mod: nn.Module, qconfig: QConfig | None) -> QConfig:
    qconfig = qconfig if qconfig is not None else getattr(mod, "qconfig", None)
    if qconfig is None:
        raise ValueError(f"{type(mod).__name__}.from_float needs a qconfig")
    if qconfig.weight is None:
        raise ValueError(f"{type(mod).__name__} holds weights: its qconfig needs a weight")
    return qconfig


class Conv2d(IntegerEval):
    """QAT ``nn.Conv2d``: the base of the conv-BN blocks, with BN and activation absent."""

    _FLOAT: ClassVar[type[nn.Module]] = nn.Conv2d

    def __init__(
        self,
        conv: nn.Conv2d,
        qconfig: QConfig,
        bn: nn.Module | None = None,
        act: nn.Module | None = None,
        qat_mode: QATMode | str = QATMode.FuseBN,
    ) -> None:
        super().__init__()
        assert qconfig.weight is not None
        self.qconfig = qconfig
        self.qat_mode = QATMode(qat_mode)
        self.bn_absorbed = False
        self.conv = conv
        self.bn = bn if bn is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        if self.has_bn and self.conv.bias is None:
            # A zero bias from the start: absorbing BN then keeps every Parameter object.
            w = self.conv.weight
            self.conv.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        self.weight_fake_quant = qconfig.weight()
        self.activation_post_process = (
            qconfig.activation() if qconfig.activation is not None else None
        )

    @classmethod
    def from_float(
        cls,
        mod: nn.Module,
        qconfig: QConfig | None = None,
        qat_mode: QATMode | str | None = None,
    ) -> Conv2d:
        """Build from the float module in ``qat_mode`` (HAT's ``get_qat_mode()`` if not
        given), sharing its conv Parameters; under ``fuse_bn`` BN is folded into a copy
        of the conv, and the float module is left as it was."""
        if type(mod) is not cls._FLOAT:
            raise TypeError(f"{cls.__name__}.from_float expects {cls._FLOAT.__name__}")
        qconfig = _qconfig_of(mod, qconfig)
        mode = get_qat_mode() if qat_mode is None else QATMode(qat_mode)
        if isinstance(mod, nn.Conv2d):
            return cls(mod, qconfig, qat_mode=mode)
        # Every other _FLOAT is a hatcli.nn.ConvBN2d (sub)class.
        block = cast(float_nn.ConvBN2d, mod)
        conv, bn = block.conv, block.bn
        if mode is QATMode.FuseBN and isinstance(bn, nn.BatchNorm2d):
            conv = copy.deepcopy(conv)
            fold_bn_into_conv_(conv, bn)
            bn = nn.Identity()
        return cls(conv, qconfig, bn=bn, act=getattr(mod, "act", None), qat_mode=mode)

    @property
    def has_bn(self) -> bool:
        """Whether a BatchNorm is still separate from the conv."""
        return isinstance(self.bn, nn.modules.batchnorm._BatchNorm)

    def _conv_bn(self, x: torch.Tensor) -> torch.Tensor:
        conv, fq = self.conv, self.weight_fake_quant
        s_in = input_scale(x)
        x = plain(x)
        if not self.has_bn:
            w: torch.Tensor = fq(conv.weight)
            b = fake_quantize_bias(conv.bias, s_in, fq.scale)
            y: torch.Tensor = conv._conv_forward(x, w, b)
            return y
        bn = self.bn
        s = bn_scale(bn)  # type: ignore[arg-type]
        reverse = self.qat_mode is QATMode.WithBNReverseFold
        if bn.training:
            # Reverse fold: conv(x, FQ(W * s)) / s, with the division on the weights rather
            # than on the output (the conv is linear in each output channel's weights, and
            # weights are far smaller than activations).
            if not reverse:
                w = fq(conv.weight)
            elif conv.weight.dtype == torch.float32 and fq.ch_axis in (0, None):
                w = _ReverseFoldWeight.apply(conv.weight, s, fq)  # type: ignore[no-untyped-call]
            else:
                s_view = channel_view(s, conv.weight.dim())
                w = fq(conv.weight * s_view) / s_view
            out: torch.Tensor = bn(conv._conv_forward(x, w, conv.bias))
            return out
        w = fq(conv.weight * channel_view(s, conv.weight.dim())) if reverse else fq(conv.weight)
        # Eval: BN with running stats is affine, computed in the folded form the integer
        # model uses (same weight integers, bias rounded to the same int32 grid).
        # float64, as the conversion computes it, so both round the bias alike
        w_scale = fq.scale.double() if reverse else fq.scale.double() * s.double()
        bias = fake_quantize_bias(fold_bn_bias(conv.bias, bn), s_in, w_scale)  # type: ignore[arg-type]
        y = conv._conv_forward(x, w, None)
        if not reverse:
            y = y * s.reshape(1, -1, 1, 1)
        return y + bias.reshape(1, -1, 1, 1)  # type: ignore[union-attr]

    def _post(self, y: torch.Tensor) -> torch.Tensor:
        app = self.activation_post_process
        if app is not None:
            return app.after_activation(y, self.act)
        out: torch.Tensor = self.act(y)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exact_eval(lambda: self._post(self._conv_bn(x)), [x])

    @torch.no_grad()
    def fuse_norm(self) -> dict[nn.Parameter, nn.Parameter | None]:
        """Absorb BN into the conv in place: ``W' = W * s``, ``b' = (b - mean) * s + beta``.

        The conv's weight and bias stay the same Parameter objects (an optimizer holding
        them keeps training the fused ones); BN's gamma and beta drop out of the model.
        Returns the old -> new Parameter mapping (``None``: no longer used). Under
        ``with_bn_reverse_fold`` the eval output is unchanged; under ``with_bn`` it
        changes, since the weight scale was learned on ``W`` rather than ``W * s``.
        """
        if not self.has_bn:
            return {}
        bn = self.bn
        fold_bn_into_conv_(self.conv, bn)  # type: ignore[arg-type]
        self.bn = nn.Identity()
        self.bn_absorbed = True
        # torch types a conv's weight and bias as Tensor; they are Parameters.
        weight = cast(nn.Parameter, self.conv.weight)
        mapping: dict[nn.Parameter, nn.Parameter | None] = {weight: weight}
        if self.conv.bias is not None:
            bias = cast(nn.Parameter, self.conv.bias)
            mapping[bias] = bias
        for p in bn.parameters():
            mapping[p] = None
        return mapping

    absorb_bn = fuse_norm

    def get_extra_state(self) -> torch.Tensor:
        # A tensor, not a dict: a checkpoint's state_dict stays a mapping of names to
        # tensors, which is what hat accepts from a file.
        return torch.tensor(self.bn_absorbed)

    def set_extra_state(self, state: Any) -> None:
        """Absorb BN if the saved module had (called by ``load_state_dict`` before the
        conv's weights load, so they overwrite the fold). BN absorbed here but not in
        the saved module cannot come back: the state dict's BN tensors then do not fit."""
        if not isinstance(state, torch.Tensor) or state.numel() != 1:
            raise RuntimeError(f"{type(self).__name__}: extra state {state!r} is not a flag")
        if bool(state) and not self.bn_absorbed:
            self.fuse_norm()
            self.bn_absorbed = True

    def extra_repr(self) -> str:
        absorbed = ", bn_absorbed=True" if self.bn_absorbed else ""
        return f"qat_mode={self.qat_mode.value}{absorbed}"


class ConvBN2d(Conv2d):
    """QAT ``hatcli.nn.ConvBN2d``."""

    _FLOAT = float_nn.ConvBN2d


class ConvBNReLU2d(Conv2d):
    """QAT ``hatcli.nn.ConvBNReLU2d``."""

    _FLOAT = float_nn.ConvBNReLU2d


class ConvBNReLU62d(Conv2d):
    """QAT ``hatcli.nn.ConvBNReLU62d``."""

    _FLOAT = float_nn.ConvBNReLU62d


class ConvBNAdd2d(Conv2d):
    """QAT ``hatcli.nn.ConvBNAdd2d``: the residual joins before the output fake-quant."""

    _FLOAT: ClassVar[type[nn.Module]] = float_nn.ConvBNAdd2d

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.exact_eval(lambda: self._post(self._conv_bn(x) + residual), [x, residual])


class ConvBNAddReLU2d(ConvBNAdd2d):
    """QAT ``hatcli.nn.ConvBNAddReLU2d``."""

    _FLOAT = float_nn.ConvBNAddReLU2d
