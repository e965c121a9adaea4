"""Turning spec nodes into objects through the installed components."""

from __future__ import annotations

from typing import Any

from hatcli import plugins
from hatcli.errors import InputError
from hatcli.spec.loader import JsonPath, Positions


def located(positions: Positions, path: JsonPath, message: str) -> InputError:
    return InputError(str(positions.problem(path, message)))


def split_node(
    node: str | dict[str, Any], drop: tuple[str, ...] = ()
) -> tuple[str, dict[str, Any]]:
    """``(type name, parameters)`` of a component node (a name, or a mapping with ``type``)."""
    if isinstance(node, str):
        return node, {}
    params = {k: v for k, v in node.items() if k != "type" and k not in drop}
    return node["type"], params


def build_component(
    kind: str,
    node: str | dict[str, Any],
    path: JsonPath,
    positions: Positions,
    *args: Any,
    drop: tuple[str, ...] = (),
    **extra: Any,
) -> Any:
    """Call the factory of the component ``node`` names; its input errors get the node's place."""
    name, params = split_node(node, drop)
    component = plugins.get_component(kind, name)
    try:
        return component.factory(*args, **params, **extra)
    except InputError as exc:
        if not isinstance(exc, TypeError):  # located already; a QuantizationError is not
            raise
        raise located(positions, path, f"{name}: {exc}") from None
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise located(positions, path, f"{name}: {message}") from None
