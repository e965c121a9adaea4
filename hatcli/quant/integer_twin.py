"""The integer twin a QAT module runs in eval: the module ``convert`` builds from it.

The integer modules import the QAT modules (to convert them), never the reverse, so QAT
eval cannot build its twin itself: it asks the factory installed with
``set_twin_factory``, and this module, above both families, installs the
QAT -> integer table there. ``hatcli.quant`` imports it, so the factory is in place
before any QAT module runs.
"""

from __future__ import annotations

from torch import nn

from hatcli.quant.mappings import QAT_TO_INTEGER
from hatcli.quant.nn.qat.integer_eval import set_twin_factory


def integer_twin(mod: nn.Module) -> nn.Module:
    """The integer module ``convert`` would build from ``mod`` as it is now."""
    return QAT_TO_INTEGER[type(mod)](mod)


set_twin_factory(integer_twin)
