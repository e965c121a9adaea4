"""hat: quantization-aware training of PyTorch models for int8 fixed-point accelerators.

The public Python API, for notebooks and scripts::

    import hatcli
    spec = hatcli.load_spec("examples/digits/spec.yaml")
    summary = hatcli.run_stage(spec, "float")
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from hatcli.engine import stage as _stage
from hatcli.engine.callback import Callback
from hatcli.engine.metric import Metric
from hatcli.errors import CheckpointError, HatError, InputError, Problem, RunError, SpecError
from hatcli.export.exporter import Exporter
from hatcli.hookspecs import hookimpl
from hatcli.spec.spec import Spec, load_spec


def _as_spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def build_model(spec: Spec | str | Path, stage: str) -> nn.Module:
    """The model as ``stage`` runs it, after its ``model_convert_pipeline``."""
    return _stage.build_model(_as_spec(spec), stage)


def build_data_loader(
    spec: Spec | str | Path, split: str, stage: str | None = None
) -> DataLoader[Any]:
    """A DataLoader yielding ``(inputs, targets)`` for a data split of the spec (or a stage)."""
    return _stage.build_data_loader(_as_spec(spec), split, stage)


def run_stage(spec: Spec | str | Path, stage: str, *, quiet: bool = True) -> dict[str, Any]:
    """Run one stage; returns its summary (also written to ``{work_dir}/{stage}/summary.json``)."""
    return _stage.run_stage(_as_spec(spec), stage, quiet=quiet)


__all__ = [
    "Callback",
    "CheckpointError",
    "Exporter",
    "HatError",
    "InputError",
    "Metric",
    "Problem",
    "RunError",
    "Spec",
    "SpecError",
    "__version__",
    "build_data_loader",
    "build_model",
    "hookimpl",
    "load_spec",
    "run_stage",
]
