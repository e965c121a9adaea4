"""``{name}``-style placeholders in spec strings; ``{{`` and ``}}`` stand for literal braces."""

from __future__ import annotations

import re
from typing import Any

from hatcli.errors import Problem
from hatcli.spec.loader import JsonPath, Positions

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def interpolate_string(
    text: str, variables: dict[str, str], path: JsonPath, positions: Positions
) -> tuple[str, list[Problem]]:
    problems: list[Problem] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        if name in variables:
            return variables[name]
        known = ", ".join("{" + v + "}" for v in sorted(variables))
        problems.append(positions.problem(path, f"unknown placeholder {token}; known: {known}"))
        return token

    return PLACEHOLDER.sub(replace, text), problems


def interpolate(
    node: Any, variables: dict[str, str], path: JsonPath, positions: Positions
) -> tuple[Any, list[Problem]]:
    """A copy of ``node`` with every placeholder replaced, and the problems found."""
    if isinstance(node, str):
        return interpolate_string(node, variables, path, positions)
    problems: list[Problem] = []
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out[key], found = interpolate(value, variables, (*path, key), positions)
            problems += found
        return out, problems
    if isinstance(node, list):
        items = []
        for index, value in enumerate(node):
            item, found = interpolate(value, variables, (*path, index), positions)
            items.append(item)
            problems += found
        return items, problems
    return node, problems
