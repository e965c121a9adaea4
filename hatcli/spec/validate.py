"""Checking a loaded spec: the base schema, each component's own schema, and cross-field rules."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from hatcli import plugins
from hatcli.errors import Problem
from hatcli.quant.qat_mode import fuse_bn_mode_problem
from hatcli.spec import defaults
from hatcli.spec.loader import JsonPath, Positions
from hatcli.spec.schema import COMMON_KEYWORD, KIND_KEYWORD, base_schema, component_schema
from hatcli.spec.training import trains


def did_you_mean(word: str, choices: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# HAT's names for keys hat names otherwise (or has no use for): the hint an unknown key
# gets where the first name, a key of hat's, is allowed (so the hint is for that place).
HAT_NAMES = {
    "data_loader": ("data", "hat calls it 'data' (splits by name: train, val)"),
    "type": ("trainer", "a stage's trainer is 'trainer' in hat"),
    "keep_n": ("max_keep", "hat calls it 'max_keep'"),
    "strict_match": ("name_prefix", "hat's Checkpoint always loads strictly; remove it"),
    "val_interval": ("every", "hat calls it 'every' (with interval_by: epoch or step)"),
    "val_on_train_end": ("at_end", "hat calls it 'at_end'"),
    "callbacks": ("metrics", "a Validation's metrics are 'metrics' in hat"),
    "inplace": ("step_or_epoch", "hat's FuseBN always absorbs in place; remove it"),
}
HAT_NULL_WHEN_NOT_TRAINING = {"data_loader"}
"""Keys a HAT stage that does not train sets to None (``data_loader=None``): accepted."""
NULLABLE_KEYWORD = "x-hat-nullable"
"""A component place where null means none (HAT's ``optimizer=None``)."""


def _component_keyword(
    validator: Any, kind: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """``x-hat-kind: KIND``: the node names an installed component of KIND."""
    singular = plugins.singular(kind)
    if instance is None and schema.get(NULLABLE_KEYWORD):
        return
    if isinstance(instance, str):
        instance = {"type": instance}
        type_path: tuple[str, ...] = ()
    elif isinstance(instance, dict):
        type_path = ("type",)
    else:
        yield ValidationError(f"must be a {singular} name or a mapping with 'type'")
        return
    name = instance.get("type")
    if name is None:
        yield ValidationError(f"missing 'type': which {singular} to use")
        return
    if not isinstance(name, str):
        yield ValidationError(f"{name!r} is not a {singular} name", path=type_path)
        return
    installed = plugins.components(kind)
    component = installed.get(name)
    if component is None:
        hint = did_you_mean(name, set(installed)) or (
            f"; installed: {', '.join(sorted(installed))}" if installed else ""
        )
        yield ValidationError(f"unknown {singular} {name!r}{hint}", path=type_path)
        return
    effective = component_schema(component, schema.get(COMMON_KEYWORD, {}))
    yield from validator.descend(instance, effective)


HatValidator = validators.extend(  # type: ignore[no-untyped-call]  # jsonschema's stub
    Draft202012Validator, {KIND_KEYWORD: _component_keyword}
)


def _allowed_keys(schema: Any) -> set[str]:
    return set(schema.get("properties", {})) if isinstance(schema, dict) else set()


def _to_problems(error: ValidationError, positions: Positions) -> Iterator[Problem]:
    path: JsonPath = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error.schema)
        schema = error.schema if isinstance(error.schema, dict) else {}
        patterns = list(schema.get("patternProperties", {}))
        for key in error.instance:
            if key in allowed or any(re.search(p, key) for p in patterns):
                continue
            if _hat_null(key, error.instance, allowed):
                continue
            hat_name, hint = HAT_NAMES.get(key, ("", ""))
            hint = f"; {hint}" if hat_name in allowed else did_you_mean(key, allowed)
            yield positions.problem((*path, key), f"unknown key {key!r}{hint}", at_key=True)
        return
    if error.validator == "enum" and isinstance(error.instance, str):
        choices = error.validator_value if isinstance(error.validator_value, list) else []
        hint = did_you_mean(error.instance, [str(v) for v in choices])
        yield positions.problem(path, f"{error.message}{hint}")
        return
    if error.validator == "required" and isinstance(error.instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [k for k in required if k not in error.instance]
        for key in missing:
            yield positions.problem(path, f"missing required key {key!r}")
        return
    if "propertyNames" in error.schema_path:
        yield positions.problem(
            (*path, str(error.instance)), f"name {error.instance!r} is not allowed", at_key=True
        )
        return
    yield positions.problem(path, error.message)


def _hat_null(key: str, node: dict[str, Any], allowed: set[str]) -> bool:
    """A HAT stage's ``data_loader: null`` in a stage that does not train."""
    stage = "num_epochs" in allowed and "trainer" in allowed
    not_training = not trains(node.get("num_epochs"), node.get("num_steps"))
    return stage and key in HAT_NULL_WHEN_NOT_TRAINING and node[key] is None and not_training


def _schema_problems(data: dict[str, Any], positions: Positions) -> list[Problem]:
    validator = HatValidator(base_schema())
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        problems.extend(_to_problems(error, positions))
    return problems


def _stage_problems(data: dict[str, Any], positions: Positions) -> list[Problem]:
    """Rules that span several keys, which the schema cannot say clearly."""
    problems: list[Problem] = []
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return problems  # the schema reports it
    for stage_name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        where: JsonPath = ("stages", stage_name)
        if "model" not in stage and "model" not in data:
            problems.append(
                positions.problem(
                    where, "no model: set 'model' at the top level or in this stage", at_key=True
                )
            )
        if "num_epochs" in stage and "num_steps" in stage:
            problems.append(
                positions.problem(
                    (*where, "num_steps"), "set num_epochs or num_steps, not both", at_key=True
                )
            )
        problems += _save_traced_of_a_qat_model(stage, where, positions)
        problems += _callbacks_the_stage_cannot_serve(stage, where, positions)
        if not trains(stage.get("num_epochs"), stage.get("num_steps")):
            continue
        if stage.get("optimizer") is None and _trainer_needs_optimizer(stage):
            problems.append(
                positions.problem(where, "this stage trains but has no 'optimizer'", at_key=True)
            )
        splits = stage["data"] if "data" in stage else data.get("data")  # as Spec.stage does
        if isinstance(splits, dict) and "train" not in splits:
            problems.append(
                positions.problem(
                    where, "this stage trains but no 'train' data loader is set", at_key=True
                )
            )
    return problems


def _type_names(nodes: Any) -> list[Any]:
    items = nodes if isinstance(nodes, list) else []
    return [node.get("type") if isinstance(node, dict) else node for node in items]


def _save_traced_of_a_qat_model(
    stage: dict[str, Any], where: JsonPath, positions: Positions
) -> list[Problem]:
    """``SaveTraced`` in a stage whose pipeline ends at a QAT model: nothing to trace."""
    pipeline = stage.get("model_convert_pipeline")
    converters = _type_names(pipeline.get("converters") if isinstance(pipeline, dict) else None)
    if "Float2QAT" not in converters or "QAT2Quantize" in converters:
        return []
    return [
        positions.problem(
            (*where, "callbacks", index),
            "SaveTraced cannot trace a QAT model (its fake quantization has no TorchScript "
            "form); trace the integer model in the stage after QAT2Quantize",
        )
        for index, name in enumerate(_type_names(stage.get("callbacks")))
        if name == "SaveTraced"
    ]


# Built-in callbacks that put no metric in ctx.metrics (a plugin's callback may).
NO_METRICS = {"Checkpoint", "FuseBN", "SaveTraced"}


def _callbacks_the_stage_cannot_serve(
    stage: dict[str, Any], where: JsonPath, positions: Positions
) -> list[Problem]:
    """A monitored metric nothing computes; FuseBN where BN is folded before QAT."""
    nodes = stage.get("callbacks")
    names = _type_names(nodes)
    pipeline = stage.get("model_convert_pipeline")
    qat_mode = pipeline.get("qat_mode", defaults.QAT_MODE) if isinstance(pipeline, dict) else None
    problems = []
    for index, (name, node) in enumerate(zip(names, nodes or [], strict=False)):
        at: JsonPath = (*where, "callbacks", index)
        monitor = node.get("monitor_metric_key") if isinstance(node, dict) else None
        if name == "Checkpoint" and monitor is not None and set(names) <= NO_METRICS:
            problems.append(
                positions.problem(
                    (*at, "monitor_metric_key"),
                    f"Checkpoint: monitor_metric_key {monitor!r} needs a Validation callback "
                    "in this stage",
                )
            )
        problem = fuse_bn_mode_problem(qat_mode) if isinstance(qat_mode, str) else None
        if name == "FuseBN" and problem is not None:
            problems.append(positions.problem(at, problem))
    return problems


def _checkpoint_clashes(data: dict[str, Any], positions: Positions) -> list[Problem]:
    """Two ``Checkpoint`` callbacks (in one stage or two) that would write the same files."""
    problems: list[Problem] = []
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return problems
    writers: dict[tuple[str, str], str] = {}
    for stage_name, stage in stages.items():
        callbacks = stage.get("callbacks") if isinstance(stage, dict) else None
        for index, node in enumerate(callbacks if isinstance(callbacks, list) else []):
            name = node.get("type") if isinstance(node, dict) else node
            if name != "Checkpoint":
                continue
            params = node if isinstance(node, dict) else {}
            prefix = params.get("name_prefix", f"{stage_name}-")
            folder = params.get("save_dir", "{work_dir}")
            if not isinstance(prefix, str) or not isinstance(folder, str):
                continue
            key = (
                folder.replace("{stage}", str(stage_name)).rstrip("/") or "/",
                prefix.replace("{stage}", str(stage_name)),
            )
            where: JsonPath = ("stages", stage_name, "callbacks", index)
            if key in writers:
                problems.append(
                    positions.problem(
                        where,
                        f"this Checkpoint writes the same files as the one in {writers[key]} "
                        f"({key[1]}checkpoint-*.pth.tar in {key[0]}); give each its own "
                        "name_prefix or save_dir",
                    )
                )
            else:
                writers[key] = f"stage {stage_name!r}"
    return problems


def _trainer_needs_optimizer(stage: dict[str, Any]) -> bool:
    """What the stage's trainer class says; an unknown trainer is reported elsewhere."""
    node = stage.get("trainer", defaults.TRAINER)
    name = node.get("type") if isinstance(node, dict) else node
    component = plugins.components("trainers").get(name) if isinstance(name, str) else None
    factory = component.factory if component is not None else None
    from hatcli.engine.loop import Trainer  # the contract; the engine imports spec/ first

    if isinstance(factory, type) and issubclass(factory, Trainer):
        return factory.needs_optimizer
    return True


def validate(data: dict[str, Any], positions: Positions) -> list[Problem]:
    """Every problem in a loaded spec, or an empty list."""
    problems = [
        *_schema_problems(data, positions),
        *_stage_problems(data, positions),
        *_checkpoint_clashes(data, positions),
    ]
    # A mistake inside an anchor shows up at every alias; report it once, at its place.
    unique: dict[tuple[int, int, str], Problem] = {}
    for problem in sorted(set(problems), key=lambda p: (p.line, p.column, len(p.path))):
        unique.setdefault((problem.line, problem.column, problem.message), problem)
    return sorted(unique.values())
