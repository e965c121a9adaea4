"""``QuantizableModel``: HAT's two model methods, ``fuse_model()`` and ``set_qconfig()``,
written once for the usual model.

This module, unlike the rest of ``hatcli.nn``, uses ``hatcli.quant`` (for the default
qconfigs); ``hatcli.nn`` does not import it, so ``hatcli.quant`` can go on importing
``hatcli.nn`` without a cycle.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from hatcli.nn.fuse import fuse_children
from hatcli.quant.qconfig import get_default_qat_out_qconfig, get_default_qat_qconfig


class QuantizableModel(nn.Module):
    """A model that ``Float2QAT`` can convert: int8 everywhere, the layers named in
    ``output_layers`` with an unquantized (int32) output.

    Subclass it instead of ``nn.Module`` and set ``output_layers``; override either
    method for anything else (call ``super()`` to keep the default part). A model may
    still write both methods itself, as in HAT: ``hat`` only calls them.
    """

    output_layers: ClassVar[tuple[str, ...]] = ()
    """Dotted names of the layers whose outputs leave the model (usually the classifier):
    their weights are quantized, their output is not fake-quantized."""

    def fuse_model(self) -> None:
        """Fuse every child that can (``Float2QAT`` then folds BN under fuse_bn).

        HAT calls only the outermost module's ``fuse_model()``; this walks into every
        child (see ``hatcli.nn.fuse_children``)."""
        fuse_children(self)

    def set_qconfig(self) -> None:
        """``get_default_qat_qconfig()`` for the whole model, then
        ``get_default_qat_out_qconfig()`` for each of ``output_layers``."""
        # torch types Module.__setattr__ for Tensors and Modules; any attribute works.
        self.qconfig = get_default_qat_qconfig()
        for name in self.output_layers:
            self.get_submodule(name).qconfig = get_default_qat_out_qconfig()  # type: ignore[assignment]
