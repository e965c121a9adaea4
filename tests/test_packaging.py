"""pyproject.toml lists packages by hand (two folders are mapped); keep that list complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[set[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["packages"]), config["package-dir"]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    parts = package.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[end:])
    return ROOT / Path(*parts)


def test_every_package_folder_is_declared() -> None:
    packages, package_dir = _declared()
    declared_folders = {_folder_of(p, package_dir).resolve() for p in packages}
    found = {
        init.parent.resolve()
        for top in ("hatcli", "plugins", "schemas")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - declared_folders == set(), "add these to [tool.setuptools] packages"
    assert all((folder / "__init__.py").is_file() for folder in declared_folders)


def test_built_in_plugins_are_registered_only_through_entry_points() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["hat"]
    plugin_packages = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert set(entry_points.values()) == plugin_packages
