"""Shared bits of the benchmark scripts: models by name, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hatcli import plugins

RESULTS = Path(__file__).parent / "results"
INPUT_SHAPES = {"DigitsNet": (1, 8, 8), "ResNet18": (3, 32, 32), "MobileNetV2": (3, 32, 32)}


def build(name: str, **params: Any) -> nn.Module:
    return plugins.get_component("models", name).factory(**params)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of ``model`` on ``(x, y)``, run once as a warm-up."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up: observers initialise, allocator settles
    return step


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write(name: str, rows: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({"machine": machine(), "torch": torch.__version__, "rows": rows}, indent=2)
    )
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            " | ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)
