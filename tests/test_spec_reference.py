"""docs/spec-reference.md is what scripts/spec_reference.py writes from the schemas, so
a key added to a schema without regenerating the page fails here (and in CI)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from hatcli.spec.schema import base_schema

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "spec_reference.py"
_spec = importlib.util.spec_from_file_location("spec_reference", SCRIPT)
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)
sys.modules["spec_reference"] = reference
_spec.loader.exec_module(reference)

STALE = "docs/spec-reference.md is stale: run `python scripts/spec_reference.py` and commit it"


def test_the_committed_page_is_what_the_script_writes() -> None:
    written = reference.render()
    committed = reference.OUTPUT.read_text()
    # torch's optimizers, schedulers and losses have the keys of the installed torch:
    # they are compared only under the torch release the page was written with.
    assert reference.without_torch_sections(committed) == reference.without_torch_sections(
        written
    ), STALE
    recorded = re.search(r"signatures of torch (\S+?)\.$", committed, re.MULTILINE)
    assert recorded is not None
    if recorded.group(1) == reference.torch_release():
        assert committed == written, STALE


def test_every_key_and_component_is_on_the_page() -> None:
    text = reference.render()
    schema = base_schema()
    stage = schema["$defs"]["stage"]["properties"]
    for key in [*schema["properties"], *stage]:
        assert f"| `{key}`" in text, key
    for kind, components in reference.built_in_components().items():
        for component in components:
            assert f"#### `{component.name}`" in text, (kind, component.name)
            for key in (component.schema or {}).get("properties", {}):
                assert f"| `{key}`" in text, (component.name, key)


def test_tables_keep_their_columns() -> None:
    """A ``|`` inside a cell (an enum, a pattern) is escaped, so no row grows a column."""
    for line in reference.render().splitlines():
        if line.startswith("| "):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5, line


def test_check_says_when_the_page_is_stale(tmp_path: Path, monkeypatch, capsys) -> None:
    stale = tmp_path / "spec-reference.md"
    stale.write_text("# Spec reference\n")
    monkeypatch.setattr(reference, "OUTPUT", stale)
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    assert reference.main(["--check"]) == 1
    assert "run python scripts/spec_reference.py" in capsys.readouterr().out
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0
