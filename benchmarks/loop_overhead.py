"""hat's training loop against a plain hand-written PyTorch loop: samples/s of each on the
same model, DataLoader and optimizer (goal: hat/plain >= 0.95x).

    python -m benchmarks.loop_overhead --steps 30 --rounds 5

For each configuration a spec is written to a temporary folder (a float stage,
``num_steps: --steps``, SGD with momentum, ``device: cpu``, ``log_interval`` larger than
the run, no callbacks of its own, data from an ``NpzArrays`` file of random inputs and
labels). Each round builds two contexts from it with ``hatcli.engine.stage.build_context``
(the same seed, so the same initial weights, loader and optimizer), then times, in an
order that alternates from round to round:

- **hat**: the stage's ``Trainer().fit(ctx)`` as ``hat train`` calls it: every callback
  event (hat's own ``TrainingLog`` and ``ProgressReporter``), the per-step checks
  (``checked_forward``: the batch checked for bad labels and inputs; ``loss.item()``
  checked for a finite value), ``torch.autocast`` (disabled with ``amp: off``), the
  interrupt poll, the step counters;
- **plain**: ``model.train()``, then for each batch of the same loader ``zero_grad``,
  forward, ``cross_entropy``, ``backward``, ``step`` on the other context's model and
  optimizer, for the same number of steps.

Building the contexts is not timed. Each run is timed by the process's CPU time (the
goal is judged on it, ``--clock``) and the wall clock; the table gives the medians,
samples/s and hat's extra time per step. torch runs ``--threads`` intra-op threads (1 by
default: on a shared machine one thread's CPU time is steady where its wall time is
not). The loader has no workers, so all the work is in this process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import hatcli
from benchmarks.common import table, write
from hatcli.engine.loop import Trainer
from hatcli.engine.stage import build_context

GOAL = 0.95

SPEC = """\
version: 1
name: loop_overhead
seed: 0
model: {type: MODEL, WIDTH_KEY: WIDTH}
data:
  train: {type: NpzArrays, path: "{spec_dir}/data.npz", batch_size: BATCH, shuffle: true,
          drop_last: true, num_workers: 0}
stages:
  float:
    optimizer: {type: SGD, lr: 0.01, momentum: 0.9}
    num_steps: STEPS
    log_interval: 1000000
    device: cpu
"""

CONFIGS = {
    # name: (model, width key, width, input shape)
    "ResNet18": ("ResNet18", "width", 16, (3, 32, 32)),
    "DigitsNet": ("DigitsNet", "width", 16, (1, 8, 8)),
}


def write_spec(folder: Path, name: str, batch: int, steps: int) -> Path:
    model, key, width, shape = CONFIGS[name]
    rng = np.random.default_rng(0)
    samples = batch * steps
    np.savez(
        folder / "data.npz",
        inputs=rng.standard_normal((samples, *shape), dtype=np.float32),
        targets=rng.integers(0, 10, samples, dtype=np.int64),
    )
    text = SPEC.replace("MODEL", model).replace("WIDTH_KEY", key).replace("WIDTH", str(width))
    text = text.replace("BATCH", str(batch)).replace("STEPS", str(steps))
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def run_hat(ctx: Any) -> None:
    Trainer().fit(ctx)
    assert ctx.global_step == ctx.num_steps, (ctx.global_step, ctx.num_steps)


def run_plain(ctx: Any) -> None:
    model, optimizer, loader = ctx.model, ctx.optimizer, ctx.data_loaders["train"]
    steps = ctx.num_steps
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            done += 1
            if done == steps:
                break


def timed(fn: Any, ctx: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(ctx)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, batch: int, steps: int, rounds: int, clock: str) -> dict[str, Any]:
    runs = {"hat": run_hat, "plain": run_plain}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_path = write_spec(folder, name, batch, steps)
        spec = hatcli.load_spec(spec_path, work_dir=folder / "work")
        for r in range(rounds + 1):  # round 0 warms up (allocator, lazy imports)
            order = ["hat", "plain"] if r % 2 == 0 else ["plain", "hat"]
            for kind in order:
                ctx = build_context(spec, "float")
                w, c = timed(runs[kind], ctx)
                if r > 0:
                    wall[kind].append(w)
                    cpu[kind].append(c)
                del ctx
    med = {k: statistics.median(cpu[k] if clock == "cpu" else wall[k]) for k in runs}
    wall_med = {k: statistics.median(wall[k]) for k in runs}
    cpu_med = {k: statistics.median(cpu[k]) for k in runs}
    ratio = med["plain"] / med["hat"]  # samples/s hat / plain
    samples = batch * steps
    return {
        "model": f"{name} (width {CONFIGS[name][2]}, {'x'.join(map(str, CONFIGS[name][3]))})",
        "batch": batch,
        "steps": steps,
        "plain ms/step": round(cpu_med["plain"] / steps * 1000, 2),
        "hat ms/step": round(cpu_med["hat"] / steps * 1000, 2),
        "plain samples/s": round(samples / med["plain"]),
        "hat samples/s": round(samples / med["hat"]),
        "hat/plain": round(ratio, 3),
        "hat extra ms/step": round((med["hat"] - med["plain"]) / steps * 1000, 3),
        "wall hat/plain": round(wall_med["plain"] / wall_med["hat"], 3),
        f"goal ({clock})": "met" if ratio >= GOAL else "NOT met",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows.append(measure(name, args.batch_size, args.steps, args.rounds, args.clock))
        print(table(rows[-1:], list(rows[-1])), flush=True)
        print()
    print(
        f"hat's loop (Trainer.fit) vs a plain PyTorch loop, same model, loader and optimizer; "
        f"medians of {args.rounds} interleaved rounds, {args.clock} time, "
        f"{args.threads} thread(s):"
    )
    print(table(rows, list(rows[0])))
    print(f"written: {write('loop_overhead', rows)} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
