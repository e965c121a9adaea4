"""``hat analyze``: measure a stage's model layer by layer, rank the layers that cost
accuracy, and say what to change in the spec.

The passes, in order: the float, QAT and integer models over the batches (per-layer
measurements), the sensitivity passes (two per quantized weight or activation of each
layer), and the candidate rules of the worst layers. Everything runs on the CPU in eval
mode with the observers frozen, on the first N batches of the stage's ``val`` split in
the loader's order: the same inputs give the same numbers.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from hatcli.analyze.diagnosis import culprit, why
from hatcli.analyze.evaluate import Batch, stage_evaluator
from hatcli.analyze.layers import Layer, find_layers
from hatcli.analyze.measure import Measurer
from hatcli.analyze.result import DEFAULT_SAMPLES, WORST, Analysis
from hatcli.analyze.sensitivity import Sensitivity, evaluations, measure_sensitivity, rank
from hatcli.analyze.stage_model import build_stage_model
from hatcli.analyze.suggest import Suggestion, candidates, choose
from hatcli.analyze.switches import enabled_only, observers_frozen
from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.engine.data_checks import named_batches
from hatcli.engine.stage import build_data_loader
from hatcli.errors import InputError
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.nn.qat.integer_eval import float_simulation
from hatcli.quant.qconfig_spec import QConfigSpec, QConfigSpecError
from hatcli.quant.quantize import convert
from hatcli.spec.spec import Spec


class Progress(Protocol):
    """Reports the passes: ``task(label, total)`` starts one and returns its ``advance``."""

    def task(self, label: str, total: int) -> Callable[[], None]: ...


class _Silent:
    def task(self, label: str, total: int) -> Callable[[], None]:
        return lambda: None


def require_plotting() -> None:
    """An ``InputError`` naming the extra to install when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError(
            "hat analyze draws its report with matplotlib, which is not installed: "
            "pip install 'hat[analyze]' (or pip install 'matplotlib>=3.8')"
        )


def _batches(spec: Spec, stage: str, count: int | None) -> tuple[list[Batch], bool]:
    loader = build_data_loader(spec, "val", stage)
    default = count is None
    if count is None:
        size = loader.batch_size or 1
        count = max(1, math.ceil(DEFAULT_SAMPLES / size))
    found: list[Batch] = []
    for inputs, targets in named_batches(loader, "val"):
        if len(found) == count:
            break
        found.append((inputs.float(), targets))
    if not found:
        raise InputError(f"the {stage!r} stage's 'val' data gives no batch to analyze")
    return found, default


def _qconfig_spec(spec: Spec, stage: str) -> QConfigSpec:
    pipeline = spec.stage(stage).get("model_convert_pipeline") or {}
    try:
        return QConfigSpec.parse(pipeline.get("qconfig"))
    except QConfigSpecError:
        return QConfigSpec()  # Float2QAT has already reported it


def _in_order(layers: list[Layer]) -> list[Layer]:
    ran = sorted((layer for layer in layers if layer.order >= 0), key=lambda layer: layer.order)
    return ran + [layer for layer in layers if layer.order < 0]


def analyze_stage(
    spec: Spec,
    stage: str,
    *,
    batches: int | None = None,
    sensitivity: bool = True,
    progress: Progress | None = None,
) -> Analysis:
    """Analyze ``stage``'s model on the first ``batches`` batches of ``val``."""
    if batches is not None and batches < 1:
        raise InputError(f"--batches: must be at least 1, got {batches}")
    progress = progress or _Silent()
    built = build_stage_model(spec, stage)
    model = built.model
    layers = find_layers(model, _qconfig_spec(spec, stage))
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    data, default = _batches(spec, stage, batches)
    make_evaluator, choice = stage_evaluator(spec, spec.stage(stage))
    with torch.no_grad(), observers_frozen(quantizers):
        with enabled_only(quantizers, quantizers):
            integer = convert(model)
        measurer = Measurer(model, integer, layers, quantizers, make_evaluator)
        measured = measurer.run(data, progress.task("float, QAT and integer passes", len(data)))
        metrics = {k: v[choice.key] for k, v in measured.metrics.items()}
        by_name = {layer.name: layer for layer in layers}

        def evaluate() -> float:
            with float_simulation():
                return make_evaluator().evaluate(model, data)[choice.key]

        found: dict[str, Sensitivity] | None = None
        if sensitivity:
            advance = progress.task("sensitivity", evaluations(layers))
            found = measure_sensitivity(
                layers,
                quantizers,
                evaluate,
                choice,
                metrics["float"],
                metrics["qat"],
                advance,
            )
        single = {n: s.single.sqnr_db for n, s in measured.layers.items()}
        ranking = rank(layers, found, single)
        options = {
            layer.name: candidates(
                layer,
                measured.layers[layer.name],
                culprit(layer, measured.layers[layer.name], (found or {}).get(layer.name)),
                by_name,
                measured.readers,
            )
            for layer in ranking[:WORST]
            if found is None or found[layer.name].cost > 0  # else no rule can gain
        }
        total = sum(len(o) for o in options.values()) if sensitivity else 0
        advance = progress.task("suggestions", total)

        def evaluate_counted() -> float:
            value = evaluate()
            advance()
            return value

        suggestions: dict[str, Suggestion] = {}
        for layer in ranking[:WORST]:
            if layer.name not in options:
                continue
            chosen = choose(
                layer,
                options[layer.name],
                evaluate_counted if sensitivity else None,
                metrics["qat"],
                choice,
                by_name,
                measured.readers,
                quantizers,
                built.mode == "eager",
                measured.layers[layer.name],
            )
            if chosen is not None:
                suggestions[layer.name] = chosen
    reasons = {
        layer.name: why(layer, measured.layers[layer.name], (found or {}).get(layer.name), choice)
        for layer in ranking[:WORST]
    }
    notes = [measured.integer_note] if measured.integer_note else []
    return Analysis(
        stage=stage,
        spec_name=spec.name,
        choice=choice,
        metrics=metrics,
        batches=len(data),
        samples=sum(int(t.shape[0]) for _, t in data),
        default_batches=default,
        layers=_in_order(layers),
        stats=measured.layers,
        output=measured.output,
        sensitivity=found,
        ranking=ranking,
        suggestions=suggestions,
        reasons=reasons,
        weights=built.weights,
        preparation=built.mode,
        qat_mode=built.qat_mode,
        notes=notes,
    )


def output_folder(spec: Spec, stage: str, output: Path | None) -> Path:
    """Where the report goes: ``--output``, else ``{work_dir}/analysis/{stage}``."""
    folder = Path(output) if output is not None else spec.work_dir / "analysis" / stage
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--output {folder}: exists and is not a folder")
    return folder


def write_outputs(analysis: Analysis, folder: Path) -> None:
    """``report.html``, ``layers.csv`` and ``sensitivity.json`` in ``folder``, each
    written atomically."""
    from hatcli.analyze import files, report_html  # matplotlib: only when writing

    folder.mkdir(parents=True, exist_ok=True)
    analysis.folder = folder
    atomic_write_bytes(folder / "layers.csv", files.layers_csv(analysis).encode())
    atomic_write_bytes(folder / "sensitivity.json", files.sensitivity_json(analysis).encode())
    atomic_write_bytes(folder / "report.html", report_html.render(analysis).encode())
