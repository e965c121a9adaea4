"""QAT linear layers: ``act(linear(x, FQ(W)) + b)`` then the output fake-quant."""

from __future__ import annotations

from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

import hatcli.nn as float_nn
from hatcli.quant.fake_quantize import fake_quantize_bias
from hatcli.quant.nn.qat.conv_bn import _qconfig_of
from hatcli.quant.nn.qat.integer_eval import IntegerEval
from hatcli.quant.qat_tensor import input_scale, plain
from hatcli.quant.qconfig import QConfig


class Linear(IntegerEval):
    """QAT ``nn.Linear``; with ``act`` set, the fused linear + activation."""

    _FLOAT: ClassVar[type[nn.Module]] = nn.Linear

    def __init__(self, linear: nn.Linear, qconfig: QConfig, act: nn.Module | None = None) -> None:
        super().__init__()
        assert qconfig.weight is not None
        self.qconfig = qconfig
        self.linear = linear
        self.act = act if act is not None else nn.Identity()
        self.weight_fake_quant = qconfig.weight()
        self.activation_post_process = (
            qconfig.activation() if qconfig.activation is not None else None
        )

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: QConfig | None = None) -> Linear:
        """Build from the float module, sharing its Parameters."""
        if type(mod) is not cls._FLOAT:
            raise TypeError(f"{cls.__name__}.from_float expects {cls._FLOAT.__name__}")
        qconfig = _qconfig_of(mod, qconfig)
        if isinstance(mod, nn.Linear):
            return cls(mod, qconfig)
        block = cast(float_nn.LinearReLU, mod)  # every other _FLOAT is a LinearReLU (sub)class
        return cls(block.linear, qconfig, act=block.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exact_eval(lambda: self._simulate(x), [x])

    def _simulate(self, x: torch.Tensor) -> torch.Tensor:
        lin, fq = self.linear, self.weight_fake_quant
        s_in = input_scale(x)
        w = fq(lin.weight)
        y = F.linear(plain(x), w, fake_quantize_bias(lin.bias, s_in, fq.scale))
        app = self.activation_post_process
        return app.after_activation(y, self.act) if app is not None else self.act(y)


class LinearReLU(Linear):
    """QAT ``hatcli.nn.LinearReLU``."""

    _FLOAT = float_nn.LinearReLU
