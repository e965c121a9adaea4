"""What an analysis found, as the report, the files and the terminal summary read it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hatcli.analyze.evaluate import MetricChoice
from hatcli.analyze.layers import Layer
from hatcli.analyze.measure import LayerStats
from hatcli.analyze.sensitivity import Sensitivity
from hatcli.analyze.suggest import Suggestion

WORST = 5
"""How many of the worst layers get a diagnosis, a suggestion and histograms."""

DEFAULT_SAMPLES = 2048
"""Without ``--batches``: whole batches of ``val`` up to at least this many samples (the
whole split if smaller). At 2048 samples the standard error of an accuracy is at most
1.1 points (at 50%), 0.2 points at 99%."""


@dataclass
class Analysis:
    """The measurements of one stage's model on the analysis batches."""

    stage: str
    spec_name: str
    choice: MetricChoice
    metrics: dict[str, float]  # "float" | "qat" | "integer" -> the chosen metric
    batches: int
    samples: int
    default_batches: bool
    layers: list[Layer]  # in execution order (layers that did not run last)
    stats: dict[str, LayerStats]
    output: LayerStats
    sensitivity: dict[str, Sensitivity] | None
    ranking: list[Layer]
    suggestions: dict[str, Suggestion]
    reasons: dict[str, str]
    weights: str
    preparation: str  # graph | eager
    qat_mode: str
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None

    @property
    def worst(self) -> list[Layer]:
        return self.ranking[:WORST]

    @property
    def ranked_by(self) -> str:
        return "sensitivity" if self.sensitivity is not None else "single-op SQNR"

    def rank_of(self, name: str) -> int | None:
        for i, layer in enumerate(self.ranking):
            if layer.name == name:
                return i + 1
        return None


def number(value: float | None) -> float | str | None:
    """A number for JSON: non-finite values as the strings ``inf``, ``-inf``, ``nan``."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
