"""Train-step time and peak memory: float vs hat QAT (each qat_mode) vs torch.ao eager QAT.

    python benchmarks/qat_step.py --models ResNet18 MobileNetV2 --batch-sizes 16 64 256

Each variant is timed in interleaved rounds (one step of each, round after round) so
machine noise hits all alike; the table shows medians and ratios to float and to
torch.ao. Peak memory is measured in a child process per variant as the rise of the resident
set's peak over the built model's footprint during two training steps (Linux).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import INPUT_SHAPES, build, median_time, sgd_step, table, write
from benchmarks.peers import prepare_torch_ao_qat
from hatcli.quant import prepare_qat, set_qat_mode

MODES = ("fuse_bn", "with_bn", "with_bn_reverse_fold")


def variant(model_name: str, name: str, params: dict[str, Any]) -> nn.Module:
    model = build(model_name, **params)
    model.train()
    if name == "float":
        return model
    if name == "torch.ao":
        return prepare_torch_ao_qat(model)
    mode = name.removeprefix("hat-")
    set_qat_mode(mode)
    model.fuse_model()
    model.set_qconfig()
    return prepare_qat(model, mode).train()


def step_fn(model: nn.Module, batch: int, shape: tuple[int, ...]) -> Any:
    return sgd_step(model, torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak_mb(model_name: str, name: str, batch: int) -> float:
    """In this process: how far resident memory rises above the built model while training.

    Linux only: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to now.
    """
    model = variant(model_name, name, {})
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    step = step_fn(model, batch, INPUT_SHAPES[model_name])
    step()
    step()
    return (_status_kb("VmHWM") - base) / 1024


def peak_memory_mb(model_name: str, name: str, batch: int) -> float:
    """``measure_peak_mb`` in a fresh child process, so variants do not share a heap."""
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from benchmarks.qat_step import measure_peak_mb;"
        f"print(measure_peak_mb({model_name!r}, {name!r}, {batch}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet18", "MobileNetV2"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    names = ["float", *(f"hat-{m}" for m in MODES), "torch.ao"]
    rows = []
    for model_name in args.models:
        shape = INPUT_SHAPES[model_name]
        for batch in args.batch_sizes:
            models = {n: variant(model_name, n, {}) for n in names}
            steps = {n: step_fn(models[n], batch, shape) for n in names}
            times: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(args.rounds):
                for n in names:
                    times[n].append(median_time(steps[n], 1))
            median = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
            for n in names:
                row = {
                    "model": model_name,
                    "batch": batch,
                    "variant": n,
                    "step_ms": round(median[n] * 1000, 1),
                    "x_float": round(median[n] / median["float"], 2),
                    "x_torch.ao": round(median[n] / median["torch.ao"], 2),
                }
                if not args.no_memory:
                    row["peak_mb"] = round(peak_memory_mb(model_name, n, batch), 1)
                rows.append(row)
            print(table(rows[-len(names) :], list(rows[-1])), flush=True)
            print()
            del models, steps
    print(f"written: {write('qat_step', rows)}")


if __name__ == "__main__":
    main()
