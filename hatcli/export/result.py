"""What an export wrote and measured: the ``ExportResult`` an exporter fills, and how the
exported model's outputs agree with the hat model's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

OutputScale = tuple[torch.Tensor, int | None]
"""A dequantized output's scale and its channel axis (``None``: per tensor)."""


@dataclass
class Agreement:
    """How the exported model's outputs compare with one hat model's on the val split."""

    against: str  # which hat model
    elements: int
    max_abs_diff: float
    identical: float | None = None  # fraction of elements equal (on the output grid)
    max_diff_scales: float | None = None  # largest |difference| in output scales
    accuracy: float | None = None  # the hat model's own accuracy

    def line(self) -> str:
        parts = []
        if self.identical is not None:
            parts.append(
                f"{100 * self.identical:.3f}% of {self.elements} output elements identical"
            )
        if self.max_diff_scales is not None:
            parts.append(f"max difference {self.max_diff_scales:.3g} output scales")
        else:
            parts.append(f"max abs difference {self.max_abs_diff:.3g}")
        acc = "" if self.accuracy is None else f" (its accuracy {self.accuracy:.4f})"
        return f"agreement with the {self.against}{acc}: {', '.join(parts)}"


@dataclass
class ExportResult:
    """What ``export_stage`` wrote and measured; the exporter fills in what it measured."""

    stage: str
    format: str
    path: Path
    kind: str  # float | qat | integer
    weights: str | None = None  # the stage's own checkpoint, when it has one
    label: str | None = None  # what the file is, e.g. "ONNX (QDQ int8)"; default: format
    runner: str | None = None  # what ran the exported file on the val split
    samples: int = 0
    accuracy: float | None = None  # of the exported model on the val split
    agreements: list[Agreement] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"[{self.stage}]"
        out = [f"{head} exported the {self.kind} model as {self.label or self.format}: {self.path}"]
        if self.weights:
            out.append(f"{head} weights: {self.weights}")
        if self.accuracy is not None:
            runner = f"{self.runner}, " if self.runner else ""
            out.append(
                f"{head} accuracy of the exported model ({runner}{self.samples} val "
                f"samples): {self.accuracy:.4f}"
            )
        out.extend(f"{head} {a.line()}" for a in self.agreements)
        return out


def accuracy(out: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Top-1 accuracy of class scores ``[N, C]`` against integer labels; ``None`` when
    the outputs are not class scores."""
    if out.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        return float((out.argmax(1) == targets).double().mean())
    return None


def agreement(
    against: str,
    ref: torch.Tensor,
    out: torch.Tensor,
    targets: torch.Tensor,
    scale: OutputScale | None,
    exact: bool = False,
) -> Agreement:
    """How ``out`` (the exported model's) agrees with ``ref`` (the hat model's).

    ``exact``: count elements that are equal; otherwise, with the output ``scale``, count
    those on the same integer of the output grid. With a scale, differences are also
    measured in output scales."""
    diff = (out.double() - ref.double()).abs()
    n = diff.numel()
    agree = Agreement(against, n, float(diff.max()) if n else 0.0)
    agree.accuracy = accuracy(ref, targets)
    if exact:
        agree.identical = float((out == ref).double().mean()) if n else 1.0
    if scale is None:
        return agree
    s, axis = scale
    s = s.double().abs()
    if axis is not None:
        shape = [1] * diff.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    in_scales = diff / s
    if not exact:
        # Identical: the same integer on the output grid (a float32 DequantizeLinear and
        # hat's float64 dequantization can differ in the last bit of the float value).
        agree.identical = float((in_scales < 0.5).double().mean()) if n else 1.0
    agree.max_diff_scales = float(in_scales.max()) if n else 0.0
    return agree
