"""One source for each default: the published schema's "default" values are the code's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hatcli.spec import defaults
from hatcli.spec.schema import base_schema

ROOT = Path(__file__).resolve().parents[1]


def schema_defaults(node: Any, pointer: str = "", names: bool = False) -> Iterator[tuple[str, Any]]:
    """Each ``"default"`` keyword by its pointer; ``names``: ``node`` maps property names
    to schemas (a property may be called "default")."""
    if isinstance(node, dict):
        if "default" in node and not names:
            yield pointer, node["default"]
        for key, value in node.items():
            if key != "default" or names:
                yield from schema_defaults(value, f"{pointer}/{key}", key == "properties")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_defaults(value, f"{pointer}/{index}")


def test_every_schema_default_is_the_code_default() -> None:
    published = json.loads((ROOT / "schemas" / "hat.schema.json").read_text())
    found = dict(schema_defaults(published))
    assert found == defaults.IN_SCHEMA
    # equal as JSON values, and of the same type (False is not 0)
    assert {k: type(v) for k, v in found.items()} == {
        k: type(v) for k, v in defaults.IN_SCHEMA.items()
    }


def test_the_installed_schema_is_the_published_one() -> None:
    published = json.loads((ROOT / "schemas" / "hat.schema.json").read_text())
    assert base_schema() == published
