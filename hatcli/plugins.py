"""Finding plugins through the ``hat`` entry point group and collecting their components."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import typer
import typer.main
from jsonschema import Draft202012Validator, SchemaError
from typer.models import CommandInfo, TyperInfo

from hatcli import hookspecs
from hatcli.errors import PluginError

ENTRY_POINT_GROUP = "hat"
LOAD_PLUGINS_ENV = "HAT_LOAD_PLUGINS"
PLUGINS_DIR_ENV = "HAT_PLUGINS_DIR"
"""A folder whose ``*.py`` files load as plugins (``hat --plugins-dir``), for local work."""
KINDS = (
    "models",
    "datasets",
    "transforms",
    "converters",
    "callbacks",
    "trainers",
    "metrics",
    "optimizers",
    "lr_schedulers",
    "losses",
    "batch_processors",
    "exporters",
)
# What one component of each kind is called in messages ("unknown loss", not "losse").
SINGULAR = {
    "models": "model",
    "datasets": "dataset",
    "transforms": "transform",
    "converters": "converter",
    "callbacks": "callback",
    "trainers": "trainer",
    "metrics": "metric",
    "optimizers": "optimizer",
    "lr_schedulers": "lr scheduler",
    "losses": "loss",
    "batch_processors": "batch processor",
    "exporters": "exporter",
}


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


def singular(kind: str) -> str:
    """``"losses"`` -> ``"loss"``: one component of ``kind``, as messages name it."""
    return SINGULAR[kind]


def _wanted(names: str | None) -> set[str] | None:
    if names is None:
        return None
    return {n.strip() for n in names.split(",") if n.strip()}


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, whatever the message's line breaks."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {'; '.join(lines)}" if lines else type(exc).__name__


def _warn(message: str) -> None:
    warnings.warn(message, PluginLoadWarning, stacklevel=3)


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
    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if wanted:
        names = {ep.name for ep in entry_points}
        known = names | {ep.dist.name for ep in entry_points if ep.dist is not None}
        installed = ", ".join(sorted(names)) or "none"
        for unknown in sorted(wanted - known):
            _warn(
                f"{LOAD_PLUGINS_ENV} names {unknown!r}, which is not an installed plugin; "
                f"installed: {installed}"
            )
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else None
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break hat
            _warn(
                f"plugin {ep.name!r} ({ep.value}) failed to import and was skipped: "
                f"{_describe(exc)}"
            )
            continue
        try:
            pm.register(module, name=ep.name)
        except Exception as exc:  # e.g. a hook whose arguments are not the hookspec's
            if pm.get_plugin(ep.name) is module:  # pluggy < 1.7 registers before validating
                pm.unregister(name=ep.name)
            _warn(
                f"plugin {ep.name!r} ({ep.value}) could not be registered and was skipped: "
                f"{_describe(exc)}"
            )
            continue
        version = ep.dist.version if ep.dist is not None else None
        _infos[ep.name] = PluginInfo(ep.name, dist, version)
    folder = os.environ.get(PLUGINS_DIR_ENV)
    if folder:
        _load_plugins_dir(Path(folder))


def _load_plugins_dir(folder: Path) -> None:
    """Each ``*.py`` in ``folder`` (sorted) as a plugin named by its file name, as
    pytest's conftest files and datasette's ``--plugins-dir`` load: no packaging, no
    entry point. The folder comes from the command line or the environment, never from
    a spec."""
    if not folder.is_dir():
        raise PluginError(f"--plugins-dir {folder}: not a folder")
    for path in sorted(folder.glob("*.py")):
        name = path.stem
        if pm.has_plugin(name):
            _warn(f"plugin file {path} is named like an installed plugin and was skipped")
            continue
        module_name = f"hat_plugins_dir.{name}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # so that its classes pickle by name
            spec.loader.exec_module(module)
            pm.register(module, name=name)
        except Exception as exc:  # a broken local plugin must not break hat
            sys.modules.pop(module_name, None)
            if pm.has_plugin(name):
                pm.unregister(name=name)
            _warn(f"plugin file {path} failed to load and was skipped: {_describe(exc)}")
            continue
        _infos[name] = PluginInfo(name, str(path), None)


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


def _schema_problem(schema: object) -> str | None:
    """Why ``schema`` cannot be a component's parameter schema; None when it can."""
    if not isinstance(schema, dict):
        return f"a JSON Schema object (dict) is needed, not {type(schema).__name__}"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"{exc.json_path}: {exc.message}"
    except Exception as exc:  # values JSON does not have can make the check itself fail
        return _describe(exc)
    return None


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
                if not isinstance(name, str) or not name:
                    one = singular(_kind)
                    _warn(
                        f"plugin {_plugin!r} gave {'an' if one[0] in 'aeiou' else 'a'} {one} "
                        f"the name {name!r}, which is "
                        "not a non-empty string; it was skipped"
                    )
                    return
                problem = None if schema is None else _schema_problem(schema)
                if problem is not None:
                    _warn(
                        f"plugin {_plugin!r} gave {singular(_kind)} {name!r} an invalid schema "
                        f"and it was skipped: {problem}"
                    )
                    return
                existing = collected[_kind].get(name) or _given.get(name)
                if existing is not None:
                    raise PluginError(
                        f"{singular(_kind)} {name!r} is registered by two plugins: "
                        f"{existing.plugin!r} and {_plugin!r}; uninstall one or limit "
                        f"loading with {LOAD_PLUGINS_ENV}"
                    )
                _given[name] = Component(_kind, name, factory, schema, help, _plugin)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # a broken plugin must not break hat: drop all it gave
                _warn(
                    f"plugin {plugin_name!r} failed in hat_register_{kind} and its {kind} "
                    f"were skipped: {_describe(exc)}"
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
        raise KeyError(f"no {singular(kind)} named {name!r}") from None


def plugin_infos() -> list[PluginInfo]:
    for kind in KINDS:
        components(kind)
    return sorted(_infos.values(), key=lambda info: info.name)


def _command_names(commands: list[CommandInfo], groups: list[TyperInfo]) -> set[str]:
    """The names ``hat NAME`` answers to for these commands and groups, as typer works
    them out: a command's name defaults to its function's (``_`` as ``-``), a group
    without a name adds its own commands. Raises when typer cannot build one of them."""
    probe = typer.Typer()
    probe.registered_commands = list(commands)
    probe.registered_groups = list(groups)
    return set(typer.main.get_group(probe).commands)


def register_commands(app: typer.Typer) -> None:
    """Let each plugin add its commands to ``app``, one plugin at a time.

    A plugin whose ``hat_register_commands`` raises adds nothing. A command or group
    that typer cannot build, or whose name a built-in command or an earlier plugin
    already has, is skipped. Each case warns naming the plugin; the rest go on.
    """
    impls = pm.hook.hat_register_commands.get_hookimpls()
    if not impls:
        return
    built_in = _command_names(app.registered_commands, app.registered_groups)
    owners: dict[str, str | None] = dict.fromkeys(built_in)  # None: a built-in command
    for impl in impls:
        plugin_name = impl.plugin_name
        commands, groups = list(app.registered_commands), list(app.registered_groups)
        callback = app.registered_callback
        try:
            impl.function(**{arg: app for arg in impl.argnames})
            old = {id(info) for info in [*commands, *groups]}
            now: list[CommandInfo | TyperInfo] = [*app.registered_commands, *app.registered_groups]
            added = [info for info in now if id(info) not in old]
        except Exception as exc:  # a broken plugin must not break hat: drop all it added
            app.registered_callback = callback
            _warn(
                f"plugin {plugin_name!r} failed in hat_register_commands and its commands "
                f"were skipped: {_describe(exc)}"
            )
            added = []
        # Start again from the list before the plugin ran, so that what it removed or
        # replaced comes back, and add what it gave one by one after the checks.
        app.registered_commands, app.registered_groups = commands, groups
        for info in added:
            _add_command(app, info, plugin_name, owners)


def _add_command(
    app: typer.Typer,
    info: CommandInfo | TyperInfo,
    plugin_name: str,
    owners: dict[str, str | None],
) -> None:
    what = "command group" if isinstance(info, TyperInfo) else "command"
    try:
        if isinstance(info, TyperInfo):
            names = _command_names([], [info])
        else:
            names = _command_names([info], [])
    except Exception as exc:
        _warn(
            f"plugin {plugin_name!r} gave a {what} typer cannot build; it was skipped: "
            f"{_describe(exc)}"
        )
        return
    for name in sorted(names):
        if name not in owners:
            continue
        owner = owners[name]
        if owner is None:
            _warn(
                f"plugin {plugin_name!r} adds a {what} {name!r}, the name of a built-in "
                f"command; the plugin's {what} was skipped"
            )
        else:
            _warn(
                f"plugin {plugin_name!r} adds a {what} {name!r}, which plugin {owner!r} "
                f"already added; the one of {plugin_name!r} was skipped (uninstall one or "
                f"limit loading with {LOAD_PLUGINS_ENV})"
            )
        return
    if isinstance(info, TyperInfo):
        app.registered_groups.append(info)
    else:
        app.registered_commands.append(info)
    owners.update(dict.fromkeys(names, plugin_name))
