"""Quantization for int8 fixed-point targets: float -> QAT (fake-quant) -> integer model.

Numerics: int8 symmetric, zero point 0, range [-128, 127], scale = max|x| / 127.5;
per-channel weights, per-tensor moving-average activations; float to int rounds half to
even (QAT via torch's fake-quantize kernels, the integer model in its requantization).
"""

from hatcli.quant import integer_twin as _integer_twin  # noqa: F401  (installs QAT eval's twins)
from hatcli.quant import qconfig_manager
from hatcli.quant.absorb_bn import absorb_bn, update_optimizer_params
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.functional import QFunctional
from hatcli.quant.mappings import FLOAT_TO_QAT, QAT_TO_INTEGER
from hatcli.quant.nn.qat.integer_eval import float_simulation
from hatcli.quant.observer import MovingAverageMinMaxObserver, PerChannelMinMaxObserver
from hatcli.quant.qat_mode import QATMode, get_qat_mode, set_qat_mode
from hatcli.quant.qat_tensor import QATTensor
from hatcli.quant.qconfig import QConfig, get_default_qat_out_qconfig, get_default_qat_qconfig
from hatcli.quant.qtensor import QTensor
from hatcli.quant.quantize import QuantizationError, convert, prepare_qat, propagate_qconfig_
from hatcli.quant.stubs import DeQuantStub, QuantStub

__all__ = [
    "FLOAT_TO_QAT",
    "QAT_TO_INTEGER",
    "DeQuantStub",
    "FakeQuantize",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "QATMode",
    "QATTensor",
    "QConfig",
    "QFunctional",
    "QTensor",
    "QuantStub",
    "QuantizationError",
    "absorb_bn",
    "convert",
    "float_simulation",
    "get_default_qat_out_qconfig",
    "get_default_qat_qconfig",
    "get_qat_mode",
    "prepare_qat",
    "propagate_qconfig_",
    "qconfig_manager",
    "set_qat_mode",
    "update_optimizer_params",
]
