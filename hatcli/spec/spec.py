"""A validated spec and the view of one stage that the engine runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatcli.errors import InputError, Problem, SpecError
from hatcli.spec import defaults
from hatcli.spec.interpolate import interpolate, interpolate_string
from hatcli.spec.loader import JsonPath, Positions, load_yaml
from hatcli.spec.training import trains
from hatcli.spec.validate import validate


@dataclass(frozen=True)
class Spec:
    """A loaded, validated and interpolated spec."""

    path: Path
    data: dict[str, Any]
    positions: Positions

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def work_dir(self) -> Path:
        return Path(self.data["work_dir"])

    @property
    def seed(self) -> int:
        return int(self.data.get("seed", defaults.SEED))

    @property
    def stage_names(self) -> list[str]:
        return list(self.data["stages"])

    def stage(self, name: str) -> StageSpec:
        """The stage's settings with top-level defaults (model, data, device, seed) filled in."""
        if name not in self.data["stages"]:
            known = ", ".join(self.stage_names)
            raise SpecError(
                [Problem(str(self.path), 1, 1, "", f"no stage {name!r}; the spec has: {known}")]
            )
        own: JsonPath = ("stages", name)
        settings = dict(self.data["stages"][name])
        paths: dict[str, JsonPath] = {key: (*own, key) for key in settings}
        for key in ("model", "data", "device", "seed"):
            if key not in settings and key in self.data:
                settings[key] = self.data[key]
                paths[key] = (key,)
        if settings.get("device") is None:  # HAT's device=None: chosen for you
            settings["device"] = defaults.DEVICE
        settings.setdefault("seed", self.seed)
        settings.setdefault("data", {})
        return StageSpec(name, self, settings, paths)


@dataclass(frozen=True)
class StageSpec:
    """One stage as it runs: its own keys plus inherited ones, each with its place in the file."""

    name: str
    spec: Spec
    settings: dict[str, Any]
    paths: dict[str, JsonPath]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def trains(self) -> bool:
        return trains(self.settings.get("num_epochs"), self.settings.get("num_steps"))

    def where(self, key: str, *rest: str | int) -> JsonPath:
        return (*self.paths.get(key, ("stages", self.name, key)), *rest)


def _variables(data: dict[str, Any], path: Path, positions: Positions) -> dict[str, str]:
    variables = {
        "name": str(data["name"]),
        "seed": str(data.get("seed", defaults.SEED)),
        "spec_dir": str(path.parent),
    }
    work_dir, problems = interpolate_string(
        str(data.get("work_dir", defaults.WORK_DIR)), variables, ("work_dir",), positions
    )
    if problems:
        raise SpecError(problems)
    variables["work_dir"] = work_dir
    return variables


def load_spec(path: str | Path, *, work_dir: str | Path | None = None) -> Spec:
    """Load, validate and interpolate a spec; raise ``SpecError`` with every located problem.

    ``work_dir`` overrides the spec's own ``work_dir`` (``hat --work-dir``); like the
    spec's key it must not be empty (``InputError``).
    """
    if work_dir is not None and str(work_dir) == "":
        # Path("") would quietly be the current folder; the CLI passes the raw string.
        raise InputError("--work-dir: '' should be non-empty (as work_dir in a spec)")
    path = Path(path)
    data, positions = load_yaml(path)
    problems = validate(data, positions)
    if work_dir is not None:
        data["work_dir"] = str(work_dir)
    if not isinstance(data.get("name"), str) or not isinstance(data.get("work_dir", ""), str):
        raise SpecError(problems)
    try:
        variables = _variables(data, path, positions)
    except SpecError as exc:
        raise SpecError([*problems, *exc.problems]) from None
    data["work_dir"] = variables["work_dir"]
    resolved: dict[str, Any] = {}
    for key, value in data.items():
        if key == "stages" and isinstance(value, dict):
            stages: dict[str, Any] = {}
            for stage_name, stage in value.items():
                stage_vars = {**variables, "stage": stage_name}
                stages[stage_name], found = interpolate(
                    stage, stage_vars, ("stages", stage_name), positions
                )
                problems += found
            resolved[key] = stages
        elif key == "work_dir" or key.startswith("x-"):
            # An x- key holds anchors for reuse: each alias is interpolated where it is
            # used (a shared Checkpoint's "{stage}-" inside each stage), not here.
            resolved[key] = value
        else:
            resolved[key], found = interpolate(value, variables, (key,), positions)
            problems += found
    if problems:
        raise SpecError(sorted(set(problems)))
    return Spec(path, resolved, positions)
