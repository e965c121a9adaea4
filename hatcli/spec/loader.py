"""Reading a spec file into plain Python data, remembering where every node stood.

ruamel's round-trip loader keeps the line and column of every key and value; it
builds only plain mappings, sequences and scalars, never Python objects, so a spec
cannot run code. Only regular files up to 16 MiB are read. Tags other than YAML's core
ones are refused, duplicate keys are an error, and aliases that would expand into a
huge document (an "alias bomb") are refused before anything walks them. Whatever the
bytes, loading ends in data or a ``SpecError``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver

from hatcli.errors import Problem, SpecError

JsonPath = tuple[str | int, ...]
MAX_SPEC_BYTES = 16 * 1024 * 1024
# How many nodes aliases may add to the document as written; a plain document of any
# size within MAX_SPEC_BYTES adds none.
MAX_EXPANDED_NODES = 100_000
YAML_TAG = "tag:yaml.org,2002:"
CORE_TAGS = {
    None,
    f"{YAML_TAG}map",
    f"{YAML_TAG}seq",
    f"{YAML_TAG}str",
    f"{YAML_TAG}int",
    f"{YAML_TAG}float",
    f"{YAML_TAG}bool",
    f"{YAML_TAG}null",
}
# YAML 1.1 types ruamel would build (ordered maps, sets, bytes, dates); a spec refuses
# them like any other tag, so they are built as tagged nodes and reported in place.
REFUSED_TYPE_TAGS = ("omap", "pairs", "set", "binary", "timestamp")


class _SpecResolver(VersionedResolver):
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)
        # YAML 1.2's core schema has no timestamps: an unquoted 2024-01-31 is a string.
        # (Only untagged scalars get here, so an explicit !!timestamp is still refused.)
        if str(tag) == f"{YAML_TAG}timestamp":
            return self.DEFAULT_SCALAR_TAG
        return tag


class _SpecConstructor(RoundTripConstructor):
    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (MarkedYAMLError, RecursionError):
            raise
        except Exception as exc:  # ruamel raises ValueError, KeyError... for "!!int abc"
            what = repr(node.value) if isinstance(node, ScalarNode) else "this node"
            message = f"cannot read {what} as {_short_tag(node.tag)} ({exc})"
            raise ConstructorError(None, None, message, node.start_mark) from None


for _name in REFUSED_TYPE_TAGS:
    _SpecConstructor.add_constructor(f"{YAML_TAG}{_name}", RoundTripConstructor.construct_unknown)


class _SpecComposer(Composer):
    """Counts the nodes as written in the file (an alias as one); refuses an alias inside
    the node it names, which ruamel would quietly turn into null or a cycle."""

    written = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.written += 1
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and target.end_mark is None:  # still being composed
                message = f"alias *{event.anchor} is inside the node it names"
                raise ComposerError(None, None, message, event.start_mark)
        return super().compose_node(parent, index)


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


def _short_tag(tag: Any) -> str:
    """``!!omap`` for YAML's own tags, as a spec writes them; other tags as they are."""
    text = str(tag)
    return "!!" + text[len(YAML_TAG) :] if text.startswith(YAML_TAG) else text


def _describe(key: Any) -> str:
    if isinstance(key, tuple):  # how ruamel builds a list used as a key
        return "that is a list"
    return "that is a mapping" if isinstance(key, Mapping) else repr(key)


def _children(node: Any) -> Iterator[Any]:
    return iter(node.values() if isinstance(node, dict) else node)


def _expanded_size(root: Any, budget: int) -> int:
    """Nodes of ``root`` once every alias and merge is expanded (a key counts as one),
    or a number above ``budget`` as soon as the count passes it.

    A shared mapping or sequence is counted once and its size reused, so an alias bomb
    is measured without being walked; iterative, as aliases can nest deeper than the
    stack allows. (The composer refused cycles.)
    """
    if not isinstance(root, dict | list):
        return 1
    sizes: dict[int, int] = {id(root): 1}  # 1 while being counted
    stack: list[tuple[Any, Iterator[Any], list[int]]] = [(root, _children(root), [1])]
    while stack:
        node, pending, total = stack[-1]
        child = next(pending, pending)
        if child is pending:  # all counted
            stack.pop()
            sizes[id(node)] = total[0]
            if stack:
                stack[-1][2][0] += total[0]
                if stack[-1][2][0] > budget:
                    return budget + 1
            continue
        if isinstance(node, dict):
            total[0] += 1  # the key
        if not isinstance(child, dict | list):
            total[0] += 1
        elif id(child) in sizes:
            total[0] += sizes[id(child)]
        else:
            sizes[id(child)] = 1
            stack.append((child, _children(child), [1]))
        if total[0] > budget:
            return budget + 1
    return sizes[id(root)]


def _plain(node: Any, path: JsonPath, pos: Positions, problems: list[Problem], depth: int) -> Any:
    if depth > 64:
        problems.append(pos.problem(path, "document nested too deeply"))
        return None
    tag = _tag_of(node)
    if tag is not None and tag not in CORE_TAGS:
        problems.append(
            pos.problem(path, f"tag {_short_tag(tag)!r} is not allowed: a spec holds plain data")
        )
        return None
    if isinstance(node, CommentedMap):
        for source in node.merge:  # a tag on what '<<' merges in is lost in the merge
            if (merged_tag := _tag_of(source)) not in CORE_TAGS:
                message = f"tag {_short_tag(merged_tag)!r} is not allowed: a spec holds plain data"
                problems.append(pos.problem(path, message))
        out: dict[str, Any] = {}
        for key in node:
            child_path = (*path, str(key))
            try:
                key_at, value_at = node.lc.key(key), node.lc.value(key)
            except KeyError:
                key_at = value_at = None
            if key_at is None or value_at is None:  # brought in by a '<<' merge
                key_at = value_at = tuple(p - 1 for p in pos.of_value(path))
            pos.keys[child_path] = (key_at[0] + 1, key_at[1] + 1)
            pos.values[child_path] = (value_at[0] + 1, value_at[1] + 1)
            key_tag = _tag_of(key)
            if key_tag not in CORE_TAGS:
                message = f"tag {_short_tag(key_tag)!r} is not allowed: a spec holds plain data"
                problems.append(pos.problem(child_path, message, at_key=True))
            elif not isinstance(key, str):
                problems.append(
                    pos.problem(child_path, f"key {_describe(key)} must be a string", at_key=True)
                )
            out[str(key)] = _plain(node[key], child_path, pos, problems, depth + 1)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            child_path = (*path, index)
            item_at = node.lc.item(index) or tuple(p - 1 for p in pos.of_value(path))
            pos.values[child_path] = (item_at[0] + 1, item_at[1] + 1)
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


def _refused(file: str, message: str) -> SpecError:
    return SpecError([Problem(file, 1, 1, "", message)])


def _not_regular(file: str, mode: int) -> SpecError:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((kind for test, kind in kinds.items() if test(mode)), "an unusual kind of file")
    return _refused(file, f"not a regular file ({kind}); give the path of a YAML file")


def _read_text(path: Path, file: str) -> str:
    """The file's text; only a regular file of at most MAX_SPEC_BYTES is read."""
    try:
        mode = os.stat(path).st_mode  # before opening: opening a FIFO waits for a writer
        if stat.S_ISDIR(mode):
            raise _refused(file, "is a directory, not a spec file")
        if not stat.S_ISREG(mode):
            raise _not_regular(file, mode)
        # O_NONBLOCK in case the path was replaced by a FIFO since; no effect on a file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(file, mode)
            raw = stream.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise _refused(file, "file not found") from None
    except OSError as exc:
        raise _refused(file, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise _refused(file, f"larger than {MAX_SPEC_BYTES // 2**20} MiB; a spec is a small file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refused(file, f"not UTF-8 text: {exc.reason}") from None


def _parse(text: str, file: str) -> tuple[Any, int]:
    """The document and the number of nodes written in it (each alias counts one)."""
    yaml = YAML(typ="rt", pure=True)
    yaml.Resolver = _SpecResolver
    yaml.Constructor = _SpecConstructor
    yaml.Composer = _SpecComposer
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
        raise _refused(file, f"YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise _refused(file, "YAML: document nested too deeply") from None
    except Exception as exc:  # a corner of ruamel no check above covers; still one line
        message = " ".join(str(exc).split())
        raise _refused(file, f"YAML: cannot read the document ({message})") from None
    return document, yaml.composer.written


def load_yaml(path: str | Path) -> tuple[dict[str, Any], Positions]:
    """Read ``path`` into plain data and positions, or raise ``SpecError`` (located)."""
    file = str(path)
    document, written = _parse(_read_text(Path(path), file), file)
    if document is None:
        raise _refused(file, "the spec is empty")
    if not isinstance(document, CommentedMap):
        kind = "a list" if isinstance(document, CommentedSeq) else "a single value"
        raise _refused(file, f"the spec must be a mapping, not {kind}")
    if _expanded_size(document, written + MAX_EXPANDED_NODES) > written + MAX_EXPANDED_NODES:
        raise _refused(
            file,
            f"aliases expand the document by more than {MAX_EXPANDED_NODES} nodes (an alias bomb?)",
        )
    positions = Positions(file)
    positions.values[()] = (1, 1)
    problems: list[Problem] = []
    data = _plain(document, (), positions, problems, 0)
    if problems:
        raise SpecError(problems)
    return data, positions
