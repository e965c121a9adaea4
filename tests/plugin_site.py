"""Writing a plugin package as pip would leave it, for tests that run `hat` in a subprocess."""

from __future__ import annotations

from pathlib import Path


def write_plugin_site(site: Path, module: str, code: str) -> dict[str, str]:
    """An importable plugin package in ``site`` with a ``hat`` entry point, as pip would
    leave it; returns the environment that makes a subprocess find it."""
    (site / module).mkdir(parents=True, exist_ok=True)
    (site / module / "__init__.py").write_text(code)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[hat]\n{module} = {module}\n")
    return {"PYTHONPATH": str(site)}
