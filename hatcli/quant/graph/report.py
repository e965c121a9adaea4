"""What preparation did to each op: the table in the log and ``quantization.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from hatcli.quant.mappings import FLOAT_TO_QAT, QAT_TO_INTEGER
from hatcli.quant.qconfig_spec import QConfigSpec

INT8 = "int8"
INT32_OUT = "int32 out"
KEEPS_SCALE = "keeps scale"
TABLE = "table lookup"
FLOAT_ISLAND = "float island"
QUANTIZE = "quantize"
DEQUANTIZE = "dequantize"


@dataclass(frozen=True)
class OpRecord:
    """One op of the prepared model."""

    name: str  # dotted module name in the QAT model
    type: str  # the float module class or function it came from
    runs_as: str  # int8, int32 out, table lookup, keeps scale, float island, ...
    qconfig: str  # how its qconfig was chosen ("default int8", "modules: head.*", ...)


def as_json(records: list[OpRecord], mode: str) -> dict[str, Any]:
    islands = [r.name for r in records if r.runs_as == FLOAT_ISLAND]
    return {
        "preparation": mode,
        "ops": [asdict(r) for r in records],
        "float_islands": islands,
    }


def as_table(records: list[OpRecord]) -> str:
    """A fixed-width table, one op a line."""
    header = OpRecord("op", "type", "runs as", "qconfig")
    rows = [header, *records]
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "type", "runs_as")]
    lines = []
    for r in rows:
        cells = (r.name, r.type, r.runs_as)
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + r.qconfig
        )
    return "\n".join(lines)


_EAGER_RUNS_AS = {
    "Elementwise": TABLE,
    "QuantStub": QUANTIZE,
    "DeQuantStub": DEQUANTIZE,
    "ReLU": KEEPS_SCALE,
    "MaxPool2d": KEEPS_SCALE,
}


def kept_float(module: nn.Module) -> bool:
    """A module that has a QAT form but was kept float (its qconfig is ``None``), with no
    quantized op inside."""
    if type(module) not in FLOAT_TO_QAT or getattr(module, "qconfig", 0) is not None:
        return False
    return not any(type(m) in QAT_TO_INTEGER for m in module.modules())


def eager_records(model: nn.Module, spec: QConfigSpec | None = None) -> list[OpRecord]:
    """The ops of an eagerly prepared QAT model: each module with an integer form, and
    each module kept float (by a ``float`` rule or the model's ``qconfig = None``)."""
    found = []
    kept: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(k + ".") for k in kept):
            continue
        rule = spec.rule_for(name, [type(module).__name__]) if spec is not None else None
        if name and kept_float(module):
            kept.append(name)
            how = f"spec: {rule.text}" if rule is not None else "qconfig None"
            found.append(OpRecord(name, type(module).__name__, FLOAT_ISLAND, how))
            continue
        if type(module) not in QAT_TO_INTEGER:
            continue
        out = getattr(module, "activation_post_process", False) is None
        how = _EAGER_RUNS_AS.get(type(module).__name__, INT8)
        found.append(
            OpRecord(
                name,
                type(module).__name__,
                INT32_OUT if out else how,
                f"spec: {rule.text}" if rule is not None else "model's set_qconfig",
            )
        )
    return found
