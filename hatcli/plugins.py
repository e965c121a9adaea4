"""Finding plugins through the ``hat`` entry point group and collecting their components."""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from hatcli import hookspecs
from hatcli.errors import PluginError

ENTRY_POINT_GROUP = "hat"
LOAD_PLUGINS_ENV = "HAT_LOAD_PLUGINS"
KINDS = (
    "models",
    "datasets",
    "converters",
    "callbacks",
    "trainers",
    "metrics",
    "optimizers",
    "lr_schedulers",
    "losses",
)


@dataclass(frozen=True)
class Component:
    """Something a spec can name with ``type:``."""

    kind: str
    name: str
    factory: Callable[..., Any]
    schema: dict[str, Any] | None
    help: str | None
    plugin: str


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    components: dict[str, list[str]] = field(default_factory=dict)


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or failed while registering; the others still load."""


pm = pluggy.PluginManager("hat")
pm.add_hookspecs(hookspecs)

_loaded = False
_components: dict[str, dict[str, Component]] | None = None
_infos: dict[str, PluginInfo] = {}


def _wanted(names: str | None) -> set[str] | None:
    if names is None:
        return None
    return {n.strip() for n in names.split(",") if n.strip()}


def load_plugins() -> None:
    """Import every plugin of the ``hat`` entry point group, once.

    ``HAT_LOAD_PLUGINS`` (comma separated entry point or distribution names) limits
    which load; set it to an empty string to load none.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    wanted = _wanted(os.environ.get(LOAD_PLUGINS_ENV))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break hat
            warnings.warn(
                f"plugin {ep.name!r} ({ep.value}) failed to import and was skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        pm.register(module, name=ep.name)
        version = ep.dist.version if ep.dist is not None else None
        _infos[ep.name] = PluginInfo(ep.name, dist, version)


def register_plugin(module: Any, name: str) -> None:
    """Register a plugin module directly (tests, notebooks); components are re-collected."""
    global _components
    pm.register(module, name=name)
    _infos[name] = PluginInfo(name, None, None)
    _components = None


def unregister_plugin(name: str) -> None:
    global _components
    pm.unregister(name=name)
    _infos.pop(name, None)
    _components = None


def _collect() -> dict[str, dict[str, Component]]:
    load_plugins()
    collected: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
    for info in _infos.values():
        info.components = {}
    for kind in KINDS:
        hook = getattr(pm.hook, f"hat_register_{kind}")
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            given: dict[str, Component] = {}

            def register(
                name: str,
                factory: Callable[..., Any],
                schema: dict[str, Any] | None = None,
                help: str | None = None,
                *,
                _kind: str = kind,
                _plugin: str = plugin_name,
                _given: dict[str, Component] = given,
            ) -> None:
                existing = collected[_kind].get(name) or _given.get(name)
                if existing is not None:
                    raise PluginError(
                        f"{_kind[:-1]} {name!r} is registered by two plugins: "
                        f"{existing.plugin!r} and {_plugin!r}; uninstall one or limit "
                        f"loading with {LOAD_PLUGINS_ENV}"
                    )
                _given[name] = Component(_kind, name, factory, schema, help, _plugin)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # a broken plugin must not break hat: drop all it gave
                warnings.warn(
                    f"plugin {plugin_name!r} failed in hat_register_{kind} and its {kind} "
                    f"were skipped: {type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            collected[kind].update(given)
            info = _infos.setdefault(plugin_name, PluginInfo(plugin_name, None, None))
            info.components.setdefault(kind, []).extend(given)
    return collected


def components(kind: str) -> dict[str, Component]:
    """Every installed component of one kind, by name."""
    global _components
    if _components is None:
        _components = _collect()
    return _components[kind]


def get_component(kind: str, name: str) -> Component:
    try:
        return components(kind)[name]
    except KeyError:
        raise KeyError(f"no {kind[:-1]} named {name!r}") from None


def plugin_infos() -> list[PluginInfo]:
    for kind in KINDS:
        components(kind)
    return sorted(_infos.values(), key=lambda info: info.name)
