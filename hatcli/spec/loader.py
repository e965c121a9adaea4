"""Reading a spec file into plain Python data, remembering where every node stood.

ruamel's round-trip loader keeps the line and column of every key and value; it
builds only plain mappings, sequences and scalars, never Python objects, so a spec
cannot run code. Tags other than YAML's core ones are refused, duplicate keys are an
error, and aliases that would expand into a huge document (an "alias bomb") are
refused before anything walks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from hatcli.errors import Problem, SpecError

JsonPath = tuple[str | int, ...]
MAX_EXPANDED_NODES = 100_000
CORE_TAGS = {
    None,
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


@dataclass
class Positions:
    """Where each node of a loaded document stood in its file (1-based)."""

    file: str
    values: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)

    def of_value(self, path: JsonPath) -> tuple[int, int]:
        for end in range(len(path), -1, -1):
            if path[:end] in self.values:
                return self.values[path[:end]]
        return (1, 1)

    def of_key(self, path: JsonPath) -> tuple[int, int]:
        return self.keys.get(path) or self.of_value(path)

    def problem(self, path: JsonPath, message: str, *, at_key: bool = False) -> Problem:
        line, column = self.of_key(path) if at_key else self.of_value(path)
        return Problem(self.file, line, column, dotted(path), message)


def dotted(path: JsonPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _tag_of(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    return value if isinstance(value, str) else None


def _count_nodes(node: Any, seen: dict[int, int]) -> int:
    """Size of ``node`` once every alias is expanded, memoised on shared sub-trees."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = 1  # guards against recursive aliases while counting
    children: list[Any] = []
    if isinstance(node, dict):
        children = list(node.values())
    elif isinstance(node, list):
        children = list(node)
    total = 1
    for child in children:
        total += _count_nodes(child, seen)
        if total > MAX_EXPANDED_NODES:
            break
    seen[key] = total
    return total


def _plain(node: Any, path: JsonPath, pos: Positions, problems: list[Problem], depth: int) -> Any:
    if depth > 64:
        problems.append(pos.problem(path, "document nested too deeply (or a recursive alias)"))
        return None
    tag = _tag_of(node)
    if tag is not None and tag not in CORE_TAGS:
        problems.append(pos.problem(path, f"tag {tag!r} is not allowed: a spec holds plain data"))
        return None
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            child_path = (*path, str(key))
            try:
                line, col = node.lc.key(key)
                vline, vcol = node.lc.value(key)
            except KeyError:  # brought in by a '<<' merge: located at the mapping
                line, col = vline, vcol = tuple(p - 1 for p in pos.of_value(path))
            pos.keys[child_path] = (line + 1, col + 1)
            pos.values[child_path] = (vline + 1, vcol + 1)
            if not isinstance(key, str):
                problems.append(
                    pos.problem(child_path, f"key {key!r} must be a string", at_key=True)
                )
            out[str(key)] = _plain(node[key], child_path, pos, problems, depth + 1)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            child_path = (*path, index)
            line, col = node.lc.item(index)
            pos.values[child_path] = (line + 1, col + 1)
            items.append(_plain(item, child_path, pos, problems, depth + 1))
        return items
    if isinstance(node, TaggedScalar):  # only !!str can get here
        return str(node.value)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    problems.append(
        pos.problem(path, f"value of type {type(node).__name__} is not allowed in a spec")
    )
    return None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], Positions]:
    """Read ``path`` into plain data and positions, or raise ``SpecError`` (located)."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(file, 1, 1, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(file, 1, 1, "", "is a directory, not a spec file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(file, 1, 1, "", f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise SpecError([Problem(file, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if "duplicate key" in message:
            message = message.replace("found duplicate key", "duplicate key")
        raise SpecError([Problem(file, line, column, "", f"YAML: {message}")]) from None
    except YAMLError as exc:
        message = " ".join(str(exc).split())
        raise SpecError([Problem(file, 1, 1, "", f"YAML: {message}")]) from None
    except RecursionError:
        raise SpecError([Problem(file, 1, 1, "", "YAML: document nested too deeply")]) from None
    if document is None:
        raise SpecError([Problem(file, 1, 1, "", "the spec is empty")])
    if not isinstance(document, CommentedMap):
        kind = "a list" if isinstance(document, CommentedSeq) else "a single value"
        raise SpecError([Problem(file, 1, 1, "", f"the spec must be a mapping, not {kind}")])
    if _count_nodes(document, {}) > MAX_EXPANDED_NODES:
        raise SpecError(
            [
                Problem(
                    file,
                    1,
                    1,
                    "",
                    f"aliases expand to more than {MAX_EXPANDED_NODES} nodes (an alias bomb?)",
                )
            ]
        )
    positions = Positions(file)
    positions.values[()] = (1, 1)
    problems: list[Problem] = []
    data = _plain(document, (), positions, problems, 0)
    if problems:
        raise SpecError(problems)
    return data, positions
