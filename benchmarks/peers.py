"""torch.ao eager-mode QAT versions of hat models: the peer the benchmarks compare with.

torch.ao's eager flow needs its own stubs, ``FloatFunctional`` for residual adds and
``fuse_modules_qat`` over (conv, bn, relu) names; this adapter rewrites a hat float
model (built from hatcli.nn blocks) into that form, sharing its weights.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")

import torch.ao.nn.quantized as aoq  # noqa: E402
import torch.ao.quantization as aoqz  # noqa: E402

import hatcli.nn as hnn  # noqa: E402
from hatcli.quant import DeQuantStub, QuantStub  # noqa: E402


class _AddBlock(nn.Module):
    """conv-bn (+ residual through FloatFunctional) (+ relu), as torch.ao wants it."""

    def __init__(self, block: nn.Module, relu: bool) -> None:
        super().__init__()
        self.conv, self.bn = block.conv, block.bn
        self.add = aoq.FloatFunctional()
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return self.add.add_relu(y, residual) if self.relu else self.add.add(y, residual)


def to_torch_ao(model: nn.Module) -> tuple[nn.Module, list[list[str]]]:
    """A copy of ``model`` in torch.ao eager form and the module groups to fuse."""
    model = copy.deepcopy(model)
    groups: list[list[str]] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, QuantStub):
                setattr(module, child_name, aoqz.QuantStub())
            elif isinstance(child, DeQuantStub):
                setattr(module, child_name, aoqz.DeQuantStub())
            elif isinstance(child, (hnn.ConvBNAddReLU2d, hnn.ConvBNAdd2d)):
                setattr(
                    module, child_name, _AddBlock(child, isinstance(child, hnn.ConvBNAddReLU2d))
                )
                groups.append([f"{path}.conv", f"{path}.bn"])
            elif isinstance(child, (hnn.ConvBNReLU2d,)):
                groups.append([f"{path}.conv", f"{path}.bn", f"{path}.act"])
            elif isinstance(child, (hnn.ConvBN2d, hnn.ConvBNReLU62d)):
                groups.append([f"{path}.conv", f"{path}.bn"])  # torch.ao fuses no ReLU6
    return model, groups


def prepare_torch_ao_qat(model: nn.Module, engine: str = "x86") -> nn.Module:
    """fuse_modules_qat + the engine's default QAT qconfig + prepare_qat (training mode)."""
    torch.backends.quantized.engine = engine
    ao_model, groups = to_torch_ao(model)
    ao_model.train()
    ao_model = aoqz.fuse_modules_qat(ao_model, groups)
    ao_model.qconfig = aoqz.get_default_qat_qconfig(engine)
    return aoqz.prepare_qat(ao_model)


def convert_torch_ao(qat_model: nn.Module) -> nn.Module:
    return aoqz.convert(copy.deepcopy(qat_model).eval())
