"""Write docs/spec-reference.md: every key of a spec and of every built-in component.

    python scripts/spec_reference.py            # rewrite docs/spec-reference.md
    python scripts/spec_reference.py --check    # exit 1 if the file is not what it writes

The page is made from the published base schema (``schemas/hat.schema.json``) and the
parameter schemas the built-in plugins register, so it says what ``hat validate``
checks. ``tests/test_spec_reference.py`` regenerates it and compares, so it cannot go
stale. It is a script of this repository, not part of the installed package: an
installed ``hat`` has ``hat schema`` for the same facts about *its* plugins.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hatcli import plugins
from hatcli.spec.schema import COMMON_KEYWORD, KIND_KEYWORD, base_schema
from hatcli.spec.validate import NULLABLE_KEYWORD

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "spec-reference.md"
BUILT_IN = "hat"  # the distribution whose plugins are documented
# Components whose keys are read off torch's signatures: they change with torch.
TORCH_PLUGIN = "torch"
TORCH_BEGIN = "<!-- torch-dependent -->"
TORCH_END = "<!-- /torch-dependent -->"
# Kinds that a spec never names; where they are chosen instead.
NAMED_ELSEWHERE = {"exporters": "`hat export SPEC --stage S --format NAME`"}

Schema = dict[str, Any]


def resolve(node: Schema, root: Schema) -> Schema:
    """``node`` with a local ``$ref`` followed (its own keys win over the target's)."""
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are documented, not {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def literal(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def bounds(node: Schema) -> list[str]:
    out = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            out.append(f"{sign} {node[key]}")
    if "minLength" in node:
        out.append(f"at least {node['minLength']} character(s)")
    if "pattern" in node:
        out.append(f"matching `{node['pattern']}`")
    if "minItems" in node and node.get("minItems") == node.get("maxItems"):
        out.append(f"{node['minItems']} items")
    else:
        if "minItems" in node:
            out.append(f"at least {node['minItems']} item(s)")
        if "maxItems" in node:
            out.append(f"at most {node['maxItems']} items")
    if "minProperties" in node:
        out.append(f"at least {node['minProperties']} key(s)")
    if isinstance(node.get("propertyNames"), dict) and "not" in node["propertyNames"]:
        refused = node["propertyNames"]["not"]
        if "const" in refused:
            out.append(f"not named {literal(refused['const'])}")
    return out


def kind_anchor(kind: str) -> str:
    return kind.replace("_", "-")


def kind_link(kind: str) -> str:
    return f"[{plugins.singular(kind)}](#{kind_anchor(kind)})"


def a_kind(kind: str) -> str:
    """``a [model](#models)``, ``an [optimizer](#optimizers)``."""
    return ("an " if plugins.singular(kind)[0] in "aeiou" else "a ") + kind_link(kind)


def has_keys(node: Schema) -> bool:
    return "properties" in node or COMMON_KEYWORD in node


class Page:
    """The key sections of the base schema, found before any table is written so that a
    value whose keys are listed elsewhere on the page can link there."""

    def __init__(self, root: Schema) -> None:
        self.root = root
        self.sections: list[tuple[str, Schema, str]] = []  # path, node, title
        self.anchors: dict[str, str] = {}  # $ref -> anchor of the section listing its keys
        self._walk("", root)

    def _walk(self, path: str, raw: Schema, alternative: bool = False) -> None:
        ref = raw.get("$ref")
        if ref in self.anchors:
            return  # listed once, where first met
        node = resolve(raw, self.root)
        if has_keys(node):
            anchor = "keys-" + ("-".join(filter(None, re.split(r"[^A-Za-z0-9_]+", path))) or "top")
            if ref:
                self.anchors[ref] = anchor
            title = f"`{path}`" if path else "The spec (top level)"
            self.sections.append((path, node, title + (" as a mapping" if alternative else "")))
        for key, child in node.get("properties", {}).items():
            self._walk(f"{path}.{key}" if path else key, child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            self._walk(f"{path}.<{placeholder(path)}>", extra)
        for combinator in ("anyOf", "oneOf"):
            for choice in node.get(combinator, []):
                self._walk(path, choice, alternative=True)

    def anchor_of(self, path: str) -> str:
        return "keys-" + ("-".join(filter(None, re.split(r"[^A-Za-z0-9_]+", path))) or "top")

    def type_text(self, raw: Schema) -> str:
        """What a value may be, in words."""
        node = resolve(raw, self.root)
        link = f" ([keys](#{self.anchors[raw['$ref']]}))" if raw.get("$ref") in self.anchors else ""
        if KIND_KEYWORD in node:
            text = f"{a_kind(node[KIND_KEYWORD])}: a name, or a mapping with `type`"
            return text + (", or `null` for none" if node.get(NULLABLE_KEYWORD) else "")
        if "const" in node:
            return literal(node["const"])
        if "enum" in node:
            return " | ".join(literal(v) for v in node["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in node:
                return " or ".join(self.type_text(choice) for choice in node[combinator])
        types = node.get("type")
        names = types if isinstance(types, list) else [types] if types else []
        words = []
        for name in names:
            if name == "array":
                items = node.get("items")
                words.append(f"list of {self.type_text(items)}" if items else "list")
            elif name == "object" and isinstance(node.get("additionalProperties"), dict):
                words.append(f"mapping of names to {self.type_text(node['additionalProperties'])}")
            elif name == "object":
                words.append("mapping" + link)
                link = ""
            else:
                words.append({"null": "`null`"}.get(name, name))
        text = " or ".join(words) if words else "any"
        extra = bounds(node)
        return (f"{text}, {', '.join(extra)}" if extra else text) + link

    def table(self, properties: dict[str, Schema], required: list[str]) -> list[str]:
        """One row a key: key, value, default, description."""
        out = ["| key | value | default | description |", "| --- | --- | --- | --- |"]
        for key, raw in properties.items():
            node = resolve(raw, self.root)
            name = f"`{key}`" + (" (required)" if key in required else "")
            default = literal(node["default"]) if "default" in node else ""
            description = node.get("description", "")
            cells = (name, self.type_text(raw), default, description)
            out.append("| " + " | ".join(cell(c) for c in cells) + " |")
        return out


def cell(text: str) -> str:
    """One table cell: one line, ``|`` escaped (GitHub reads ``\\|`` even in code)."""
    return " ".join(text.split()).replace("|", "\\|")


def placeholder(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    return {"stages": "stage", "data": "split", "modules": "name", "types": "type"}.get(
        last, "name"
    )


def kind_places(
    node: Any, path: str, root: Schema, seen: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """``(kind, path)`` of each place in ``node`` where a component is named."""
    if isinstance(node, list):
        for item in node:
            yield from kind_places(item, path, root, seen)
        return
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        if node["$ref"] in seen:
            return
        seen = seen | {node["$ref"]}
        node = resolve(node, root)
    if KIND_KEYWORD in node:
        yield node[KIND_KEYWORD], path
    for key, child in {**node.get(COMMON_KEYWORD, {}), **node.get("properties", {})}.items():
        yield from kind_places(child, f"{path}.{key}" if path else key, root, seen)
    if isinstance(node.get("additionalProperties"), dict):
        sub = f"{path}.<{placeholder(path)}>"
        yield from kind_places(node["additionalProperties"], sub, root, seen)
    if isinstance(node.get("items"), dict):
        yield from kind_places(node["items"], f"{path}[]", root, seen)
    for combinator in ("anyOf", "oneOf"):
        yield from kind_places(node.get(combinator, []), path, root, seen)


def torch_release() -> str:
    """torch's version without the build tag (``2.13.0``, not ``2.13.0+cpu``)."""
    return torch.__version__.split("+")[0]


# Where torch documents each kind's classes, by their public names.
TORCH_NAMESPACES = {
    "optimizers": "torch.optim",
    "lr_schedulers": "torch.optim.lr_scheduler",
    "losses": "torch.nn",
}
TORCH_DOCS = "https://pytorch.org/docs/stable/generated/{}.html"


def help_text(component: plugins.Component) -> str | None:
    """The line ``hat plugins`` shows; for torch's classes, a link to torch's page."""
    namespace = TORCH_NAMESPACES.get(component.kind)
    if component.plugin == TORCH_PLUGIN and namespace:
        public = f"{namespace}.{component.name}"
        return (
            f"torch's [`{public}`]({TORCH_DOCS.format(public)}): the keys are its "
            "arguments, as torch documents them."
        )
    return component.help


def built_in_components() -> dict[str, list[plugins.Component]]:
    """The components of hat's own plugins, by kind, in the order they are registered."""
    plugins.load_plugins()
    ours = {info.name for info in plugins.plugin_infos() if info.distribution == BUILT_IN}
    return {
        kind: [c for c in plugins.components(kind).values() if c.plugin in ours]
        for kind in plugins.KINDS
    }


def render() -> str:
    root = base_schema()
    page = Page(root)
    components = built_in_components()
    out = [
        "# Spec reference",
        "",
        "<!-- Generated by scripts/spec_reference.py from the schemas; do not edit. -->",
        "",
        "Every key of a spec and of every built-in component, made from",
        "[`schemas/hat.schema.json`](../schemas/hat.schema.json) and the parameter schemas",
        "the built-in plugins register: what `hat validate` checks. `hat schema` prints",
        "the same as one JSON Schema, with the components of every plugin you installed.",
        "[spec.md](spec.md) explains how a spec is read; this page lists its keys.",
        "",
        "A component (a model, a dataset, a converter, ...) is written as its name",
        "(`trainer: Trainer`) or as a mapping of `type` and its keys",
        "(`{type: SGD, lr: 0.1}`). A key with no default is left out unless given.",
        "",
        "## Keys",
        "",
    ]
    for path, node, title in page.sections:
        out += [f'<a id="{page.anchor_of(path)}"></a>', "", f"### {title}", ""]
        if node.get("description"):
            out += [" ".join(node["description"].split()), ""]
        properties = dict(node.get("properties", {}))
        if COMMON_KEYWORD in node:
            kind = node[KIND_KEYWORD]
            properties = {
                "type": {"description": f"Which {plugins.singular(kind)}.", "type": "string"},
                **node[COMMON_KEYWORD],
            }
            out += [f"Beside these keys, the {kind_link(kind)}'s own.", ""]
        for pattern, child in node.get("patternProperties", {}).items():
            properties[pattern.lstrip("^") + "*"] = child
        out += [*page.table(properties, node.get("required", [])), ""]

    places: dict[str, list[str]] = {}
    for kind, path in kind_places(root, "", root, frozenset()):
        places.setdefault(kind, []).append(f"`{path}`")
    for found in components.values():
        for component in found:
            for kind, path in kind_places(component.schema or {}, "", root, frozenset()):
                places.setdefault(kind, []).append(f"`{component.name}`'s `{path}`")

    torch_kinds = [
        kind for kind, found in components.items() if any(c.plugin == TORCH_PLUGIN for c in found)
    ]
    out += ["## Components", ""]
    if torch_kinds:
        out += [
            "Optimizers, LR schedulers and losses are torch's own classes: their keys and "
            f"defaults are read from the signatures of torch {torch_release()}.",
            "",
        ]
    for kind, found in components.items():
        if not found:
            continue
        if kind in torch_kinds:
            out += [TORCH_BEGIN, ""]
        out += [f"### {kind.replace('_', ' ').capitalize()}", ""]
        where = list(dict.fromkeys(places.get(kind, [])))
        if kind in NAMED_ELSEWHERE:
            where.append(NAMED_ELSEWHERE[kind])
        if where:
            out += [f"Named at {', '.join(where)}.", ""]
        for component in found:
            out += [f"#### `{component.name}`", ""]
            schema = component.schema or {}
            for line in dict.fromkeys([help_text(component), schema.get("description")]):
                if line:
                    out += [" ".join(line.split()), ""]
            if schema.get("properties"):
                out += [*page.table(schema["properties"], schema.get("required", [])), ""]
            else:
                out += ["No keys.", ""]
        if kind in torch_kinds:
            out += [TORCH_END, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def without_torch_sections(text: str) -> str:
    """``text`` less what depends on torch's version (for comparing across versions)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line == TORCH_BEGIN:
            skipping = True
        elif line == TORCH_END:
            skipping = False
        elif not skipping and "read from the signatures of torch" not in line:
            kept.append(line)
    return "\n".join(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python scripts/spec_reference.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
