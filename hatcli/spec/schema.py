"""The spec's JSON Schema: the published base file plus every installed component's schema."""

from __future__ import annotations

import copy
import importlib.resources
import json
from functools import cache
from typing import Any

from hatcli import plugins

KIND_KEYWORD = "x-hat-kind"
COMMON_KEYWORD = "x-hat-common"


@cache
def base_schema() -> dict[str, Any]:
    text = importlib.resources.files("hatcli.schemas").joinpath("hat.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def component_schema(component: plugins.Component, common: dict[str, Any]) -> dict[str, Any]:
    """The schema of one component node: its ``type`` and parameters plus shared keys."""
    own: dict[str, Any] = (
        copy.deepcopy(component.schema) if component.schema else {"type": "object"}
    )
    properties = {"type": {"const": component.name}, **common, **own.get("properties", {})}
    own["properties"] = properties
    own["type"] = "object"
    own["required"] = ["type", *own.get("required", [])]
    if component.help and "description" not in own:
        own["description"] = component.help
    return own


def _assemble(node: Any, within: frozenset[str] = frozenset()) -> Any:
    """``node`` with each component place listing its components; places inside a
    component's own schema (Validation's ``metrics``) too, except a kind within itself."""
    if isinstance(node, list):
        return [_assemble(item, within) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _assemble(value, within) for key, value in node.items()}
    kind = node.get(KIND_KEYWORD)
    if isinstance(kind, str) and kind not in within:
        common = node.get(COMMON_KEYWORD, {})
        inner = within | {kind}
        choices = [
            _assemble(component_schema(c, common), inner)
            for _, c in sorted(plugins.components(kind).items())
        ]
        names = [{"const": name} for name in sorted(plugins.components(kind))]
        out["anyOf"] = [*choices, {"enum": [n["const"] for n in names]}] if choices else []
        if node.get("x-hat-nullable"):
            out["anyOf"].append({"type": "null"})
    return out


def assembled_schema() -> dict[str, Any]:
    """The base schema with each component place listing every installed component.

    This is what ``hat schema`` prints for editors; ``hat validate`` uses the base
    schema and checks components itself, to give one precise message per problem.
    """
    schema: dict[str, Any] = _assemble(base_schema())
    return schema
