"""Shared fixtures: registering plugin modules for one test, and running ``hat`` for real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hatcli import plugins

RunHat = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def plugin() -> Iterator[Callable[[Any, str], Any]]:
    """``plugin(module, name)`` registers a plugin module until the test ends.

    Installed plugins load first, so a test plugin comes after them as a real one would.
    """
    plugins.load_plugins()
    names: list[str] = []

    def register(module: Any, name: str) -> Any:
        plugins.register_plugin(module, name)
        names.append(name)
        return module

    yield register
    for name in reversed(names):
        plugins.unregister_plugin(name)


def _run_hat(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != plugins.LOAD_PLUGINS_ENV}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hatcli", *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def hat_cli() -> RunHat:
    """``hat_cli(*args, cwd=None, env=None)``: ``python -m hatcli ARGS`` in a subprocess.

    ``HAT_LOAD_PLUGINS`` is unset unless ``env`` gives it; ``env`` adds to the current one.
    """
    return _run_hat


@pytest.fixture
def run_hat(tmp_path: Path) -> RunHat:
    """Like ``hat_cli``, with the test's ``tmp_path`` as the working directory."""

    def run(
        *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run_hat(*args, cwd=tmp_path, env=env)

    return run
