"""Exporting a stage's model: build it as ``hat train`` does, load the weights the stage
produced, refuse outputs that would replace hat's inputs or records, and hand the model
to the exporter of the chosen format (a plugin component of kind ``exporters``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hatcli import plugins
from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.load_weights import load_weights
from hatcli.engine.resume import checkpoint_files
from hatcli.engine.stage import build_data_loader, build_model, seed_everything
from hatcli.errors import InputError, PluginError
from hatcli.export.exporter import Exporter
from hatcli.export.result import ExportResult
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.spec.spec import Spec, StageSpec

KIND = "exporters"


def formats() -> list[str]:
    """The names ``--format`` takes: every installed exporter's."""
    return sorted(plugins.components(KIND))


def get_exporter(fmt: str) -> Exporter:
    """The exporter of format ``fmt``; an InputError listing the installed ones if none."""
    component = plugins.components(KIND).get(fmt)
    if component is None:
        raise InputError(
            f"--format: {fmt!r} is not one of {', '.join(formats()) or '(none installed)'}"
        )
    exporter = component.factory()
    if not isinstance(exporter, Exporter):
        raise PluginError(
            f"exporter {fmt!r} of plugin {component.plugin!r} gives a "
            f"{type(exporter).__name__}, not a hatcli.export.Exporter"
        )
    return exporter


def default_path(work_dir: Path, stage: str, fmt: str) -> Path:
    """Where ``hat export`` writes without ``--output``: ``{work_dir}/{stage}{suffix}``."""
    return _default_path(work_dir, stage, get_exporter(fmt))


def _default_path(work_dir: Path, stage: str, exporter: Exporter) -> Path:
    return work_dir / f"{stage}{exporter.suffix}"


def stage_checkpoint(spec: Spec, stage: StageSpec) -> Path | None:
    """The checkpoint the stage's first checkpointing callback writes (``best``, else
    ``last`` if ``best`` is not written or not there yet); ``None`` without one."""
    found = checkpoint_files(spec, stage.name)
    return found[0].trained_weights() if found else None


def load_stage_checkpoint(spec: Spec, stage: StageSpec, model: nn.Module) -> str | None:
    """Put the weights the stage produced into ``model`` (built by the stage's pipeline).

    The pipeline's own ``LoadCheckpoint`` loads the stage's *input* (e.g. the calibrated
    weights for ``qat``); what a stage trained is in its ``Checkpoint`` callback's file.
    A stage that has not written it yet is a ``CheckpointError``.
    """
    path = stage_checkpoint(spec, stage)
    if path is None:
        return None
    load_weights(model, load_checkpoint(path), str(path))
    return str(path)


def model_kind(model: nn.Module) -> str:
    """``integer``, ``qat`` or ``float``: which form of a model ``model`` is."""
    mods = list(model.modules())
    if any(isinstance(m, IntegerModule) for m in mods):
        return "integer"
    if any(isinstance(m, FakeQuantize) for m in mods):
        return "qat"
    return "float"


def _named_paths(node: Any) -> list[Path]:
    """Every string in a spec node that names an existing file or folder."""
    if isinstance(node, dict):
        return [p for value in node.values() for p in _named_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _named_paths(value)]
    if isinstance(node, str) and node and "\n" not in node and len(node) < 4096:
        try:
            return [Path(node)] if Path(node).exists() else []
        except OSError:
            return []
    return []


def protected_paths(spec: Spec) -> tuple[set[Path], set[Path]]:
    """``(files, folders)`` an export must never replace: the spec, what it reads, and
    what hat wrote for its stages (checkpoints, logs)."""
    files = {spec.path.resolve()}
    folders = {(spec.work_dir / name).resolve() for name in spec.stage_names}
    for path in _named_paths(spec.data):
        (folders if path.is_dir() else files).add(path.resolve())
    folders.discard(spec.work_dir.resolve())  # exports go there by default
    for name in spec.stage_names:
        for written in checkpoint_files(spec, name):
            files.update(p.resolve() for p in written.resume_candidates())
    return files, folders


def check_output(spec: Spec, path: Path, force: bool) -> None:
    """Refuse an output that would replace an input or hat's own files, or any existing
    file without ``force``."""
    target = path.resolve()
    files, folders = protected_paths(spec)
    if target in files or target.name.endswith(".pth.tar"):
        raise InputError(
            f"--output {path}: refusing to write over a file this spec reads or hat's own "
            "checkpoint; choose another path"
        )
    inside = next((f for f in folders if target.is_relative_to(f)), None)
    if inside is not None:
        raise InputError(
            f"--output {path}: refusing to write inside {inside}, which this spec reads or "
            "where hat keeps a stage's records; choose another path"
        )
    if target.is_dir():
        raise InputError(f"--output {path} is a folder; give a file path")
    if target.exists() and not force:
        raise InputError(f"--output {path} exists; pass --force to replace it")


def export_stage(
    spec: Spec, stage: str, fmt: str, output: Path | None = None, *, force: bool = False
) -> ExportResult:
    """Export ``stage``'s model (weights from its convert pipeline) with the exporter of
    format ``fmt`` and check the file.

    The file is written atomically; an ``output`` that exists is replaced only with
    ``force``, and never when it is the spec, a file it reads, or a checkpoint."""
    exporter = get_exporter(fmt)
    # The default path is hat's own file in work_dir: a new export replaces the last one.
    path = Path(output) if output is not None else _default_path(spec.work_dir, stage, exporter)
    check_output(spec, path, force or output is None)
    exporter.check()
    stage_spec = spec.stage(stage)
    seed_everything(int(stage_spec.get("seed")))
    model = build_model(spec, stage_spec)
    source = load_stage_checkpoint(spec, stage_spec, model)
    model = model.to("cpu").eval()
    loader = build_data_loader(spec, "val", stage_spec)
    batches = [(x.float(), y) for x, y in loader]
    if not batches:
        raise InputError(f"the {stage!r} stage's 'val' data gives no batch to export with")
    example = batches[0][0][: min(2, len(batches[0][0]))]
    result = ExportResult(stage, fmt, path, model_kind(model), weights=source)
    with torch.no_grad():
        exporter.export(model, example, batches, result, path)
    return result
