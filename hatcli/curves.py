"""``{work_dir}/curves.png``: the loss and validation metrics of every stage on one time
axis, each stage a band, so a reader sees where quantization cost accuracy and whether
QAT won it back. Drawn from the stages' ``metrics.jsonl`` with matplotlib (Agg)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatcli.errors import InputError
from hatcli.spec.spec import Spec

MISSING = (
    "hat plot draws with matplotlib, which is not installed: pip install 'hat[plots]' "
    "(or pip install 'matplotlib>=3.8')"
)
BAND = 0.06
"""The width of a stage that trains no step (calibration, int_infer), of the whole axis."""


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError(MISSING)


@dataclass
class StageCurves:
    """One stage's records: training loss and each validation metric by global step."""

    name: str
    train: list[tuple[int, float]] = field(default_factory=list)
    val: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        points = [s for s, _ in self.train] + [s for v in self.val.values() for s, _ in v]
        return max(points, default=0)


def read_stage(work_dir: Path, stage: str) -> StageCurves | None:
    """``{work_dir}/{stage}/metrics.jsonl`` as curves; None when the stage has no log."""
    path = work_dir / stage / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    curves = StageCurves(stage)
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill; the rest is still worth a look
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        step = record["step"]
        if record.get("event") == "train" and isinstance(record.get("loss"), (int, float)):
            curves.train.append((step, float(record["loss"])))
        elif record.get("event") == "val":
            for key, value in record.items():
                if key not in ("event", "split", "stage", "epoch", "step") and isinstance(
                    value, (int, float)
                ):
                    curves.val.setdefault(key, []).append((step, float(value)))
    return curves


def read_stages(work_dir: Path, stages: list[str]) -> list[StageCurves]:
    return [c for c in (read_stage(work_dir, s) for s in stages) if c is not None]


def _spans(stages: list[StageCurves]) -> list[tuple[float, float]]:
    """Each stage's ``(start, width)`` on the shared axis: its steps, or a fixed band."""
    total = sum(s.steps for s in stages) or 1
    spans, start = [], 0.0
    for stage in stages:
        width = float(stage.steps) if stage.steps else BAND * total
        spans.append((start, width))
        start += width
    return spans


def draw(stages: list[StageCurves], path: Path, title: str) -> Path:
    """Draw ``stages`` to ``path``: the loss above (training and validation), every other
    validation metric below, stage bands labelled, each curve's last value written."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not stages:
        raise InputError("no stage has a metrics.jsonl yet; train one first")
    spans = _spans(stages)
    metrics = sorted({k for s in stages for k in s.val if k != "loss"})
    figure, (loss_axis, metric_axis) = plt.subplots(
        2, 1, figsize=(11, 7.5), sharex=True, constrained_layout=True
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (stage, (start, width)) in enumerate(zip(stages, spans, strict=True)):
        scale = width / stage.steps if stage.steps else 0.0
        centre = start + width / 2

        def at(
            step: int, _start: float = start, _scale: float = scale, _c: float = centre
        ) -> float:
            return _start + step * _scale if _scale else _c

        for axis in (loss_axis, metric_axis):
            axis.axvspan(start, start + width, color="0.90" if index % 2 else "0.97", lw=0)
        loss_axis.text(
            centre,
            1.01,
            stage.name,
            transform=loss_axis.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
            weight="bold",
        )
        plotted: list[tuple[Any, str, list[tuple[int, float]]]] = [
            (loss_axis, "train loss", stage.train)
        ]
        plotted.append((loss_axis, "val loss", stage.val.get("loss", [])))
        plotted += [(metric_axis, name, stage.val.get(name, [])) for name in metrics]
        for number, (axis, label, points) in enumerate(plotted):
            if not points:
                continue
            xs = [at(s) for s, _ in points]
            ys = [v for _, v in points]
            style = "-" if label == "train loss" and len(points) > 1 else "o-"
            axis.plot(
                xs,
                ys,
                style,
                color=colours[number % len(colours)],
                ms=3,
                lw=1.2,
                label=label
                if index == 0 or not axis.get_legend_handles_labels()[1].count(label)
                else None,
            )
            axis.annotate(
                f"{ys[-1]:.4g}",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(3, 4 + 9 * (number % 2 if axis is loss_axis else 0)),
                fontsize=8,
                color=colours[number % len(colours)],
            )
    loss_axis.set_ylabel("loss")
    loss_axis.set_title(title, pad=18)
    metric_axis.set_ylabel("validation metric")
    metric_axis.set_xlabel("training step, stage after stage (stages without steps as bands)")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[1]:
            axis.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def draw_spec(spec: Spec, output: Path | None = None) -> Path:
    """``curves.png`` of the spec's stages in their order (``{work_dir}/curves.png``)."""
    stages = read_stages(spec.work_dir, list(spec.stage_names))
    return draw(stages, output or spec.work_dir / "curves.png", f"{spec.name}: training curves")
