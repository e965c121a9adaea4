"""Per-module qconfig from data: the spec's ``model_convert_pipeline.qconfig``.

HAT's ``set_qconfig`` gives submodules special qconfigs in Python; this says the same
in data::

    default: int8                       # what a module without a rule of its own gets
    modules:                            # dotted names, ``*`` globs
      classifier: int8_out              # int32 output
      "head.*": {activation_observer: percentile, percentile: 99.99}
      layer4.1.conv2: float             # stays float: a float island
    types: {Hardswish: float}           # module class or function name

A setting is ``int8``, ``int8_out``, ``float`` or a mapping of ``output`` (``int8`` or
``int32``), ``activation_observer`` (``minmax``, ``percentile``, ``mse``),
``percentile``, ``averaging_constant`` and ``fixed_scale``. Rules are looked up in that
order: an exact module name, the first glob that matches, the innermost enclosing
module named (a rule for ``layer4`` covers ``layer4.1.conv2``, as HAT's qconfig of a
module covers its children), the type, the default.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.observer import (
    FixedScaleObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    _Observer,
)
from hatcli.quant.qconfig import (
    QConfig,
    default_weight_fake_quant,
    get_default_qat_out_qconfig,
    get_default_qat_qconfig,
)

NAMED = {"int8": get_default_qat_qconfig, "int8_out": get_default_qat_out_qconfig}
FLOAT = "float"
OBSERVERS = ("minmax", "percentile", "mse")


class QConfigSpecError(ValueError):
    """A qconfig setting or pattern is wrong; ``path`` locates it within ``qconfig``."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Setting:
    """One resolved rule: the qconfig (``None`` keeps the op float) and how it was said."""

    qconfig: QConfig | None
    text: str


def _observer_factory(options: Mapping[str, Any], path: tuple[str, ...]) -> Callable[[], _Observer]:
    kind = options.get("activation_observer", "minmax")
    averaging = float(options.get("averaging_constant", 0.01))
    if "fixed_scale" in options:
        return partial(FixedScaleObserver, float(options["fixed_scale"]))
    if kind == "percentile":
        return partial(PercentileObserver, float(options.get("percentile", 99.99)), averaging)
    if kind == "mse":
        return partial(MSEObserver, averaging_constant=averaging)
    if kind == "minmax":
        return partial(MovingAverageMinMaxObserver, averaging)
    raise QConfigSpecError(path, f"unknown activation_observer {kind!r}; one of {OBSERVERS}")


def parse_setting(value: Any, path: tuple[str, ...]) -> Setting:
    """A setting as the spec writes it -> its qconfig."""
    if value == FLOAT:
        return Setting(None, FLOAT)
    if isinstance(value, str):
        if value not in NAMED:
            raise QConfigSpecError(
                path, f"unknown qconfig {value!r}; one of int8, int8_out, float or a mapping"
            )
        return Setting(NAMED[value](), value)
    if not isinstance(value, Mapping):
        raise QConfigSpecError(path, "a qconfig is int8, int8_out, float or a mapping")
    observer = _observer_factory(value, path)
    try:
        observer()  # checks the numbers now, not at the first batch
    except ValueError as exc:
        raise QConfigSpecError(path, str(exc)) from None
    output = value.get("output", "int8")
    activation = partial(FakeQuantize, observer=observer) if output == "int8" else None
    text = ", ".join(f"{k}={v}" for k, v in value.items())
    return Setting(QConfig(activation=activation, weight=default_weight_fake_quant), text)


@dataclass
class QConfigSpec:
    """The parsed ``qconfig`` section; ``default`` is ``None`` when the spec gave none."""

    default: Setting | None = None
    modules: dict[str, Setting] = field(default_factory=dict)
    types: dict[str, Setting] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> QConfigSpec:
        data = data or {}
        spec = cls()
        if "default" in data:
            spec.default = parse_setting(data["default"], ("default",))
        for pattern, value in (data.get("modules") or {}).items():
            spec.modules[str(pattern)] = parse_setting(value, ("modules", str(pattern)))
        for name, value in (data.get("types") or {}).items():
            spec.types[str(name)] = parse_setting(value, ("types", str(name)))
        return spec

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.modules) or bool(self.types)

    def rule_for(self, name: str, type_names: Iterable[str]) -> Setting | None:
        """The rule that applies to the op ``name`` of the given type names, if any
        (``None``: no rule; the model's own or the default qconfig applies)."""
        if name in self.modules:
            self.used.add(name)
            return self.modules[name]
        for pattern, setting in self.modules.items():
            if _matches(pattern, name):
                self.used.add(pattern)
                return setting
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):  # the innermost enclosing module first
            ancestor = ".".join(parts[:end])
            if ancestor in self.modules:
                self.used.add(ancestor)
                return self.modules[ancestor]
        for type_name in type_names:
            if type_name in self.types:
                return self.types[type_name]
        return None

    def check_all_used(self, names: Iterable[str]) -> None:
        """Every module pattern matched something; else an error with a did-you-mean."""
        known = list(names)
        for pattern in self.modules:
            covered = any(_matches(pattern, n) or n.startswith(pattern + ".") for n in known)
            if pattern in self.used or covered:
                continue
            close = difflib.get_close_matches(pattern, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise QConfigSpecError(("modules", pattern), f"matches no module of the model{hint}")


def _matches(pattern: str, name: str) -> bool:
    """``*`` matches within and across dots (``head.*`` matches ``head.0.conv``)."""
    return "*" in pattern and fnmatch.fnmatchcase(name, pattern)
