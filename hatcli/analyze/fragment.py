"""A suggestion as spec text: the ``modules`` rules to paste under
``model_convert_pipeline.qconfig``, checked by the parser ``Float2QAT`` uses."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML

from hatcli.quant.qconfig_spec import QConfigSpec

Setting = str | dict[str, Any]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _key(name: str) -> str:
    return name if _PLAIN_KEY.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'


def _value(setting: Setting) -> str:
    if isinstance(setting, str):
        return setting
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in setting.items()) + "}"


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if "e" not in f"{value:.6g}" else f"{value:.6e}"
    return str(value)


def render(rules: Mapping[str, Setting]) -> str:
    """The rules as YAML, one module a line, under a ``modules:`` key."""
    lines = ["modules:"] + [f"  {_key(n)}: {_value(s)}" for n, s in rules.items()]
    return "\n".join(lines) + "\n"


def load(text: str) -> Any:
    """The fragment's data, read as a spec is (safe YAML)."""
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


def check(text: str) -> QConfigSpec:
    """Parse the fragment as ``Float2QAT`` would; raises ``QConfigSpecError`` if it is wrong."""
    return QConfigSpec.parse(load(text))
