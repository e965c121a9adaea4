"""Mixed precision on CPU: the float stage's training step under ``amp: bf16`` against
float32 (``amp: off``), the step hat's trainer runs.

    python -m benchmarks.amp --width 64 --batch-size 64 --rounds 5

A spec (written to a temporary folder) has a float stage training ``ResNet18`` (``--width``,
32x32 inputs from an ``NpzArrays`` file of random data, SGD with momentum,
``device: cpu``); ``build_context`` builds it once with ``amp: off`` and once with
``amp: bf16`` (the same seed: the same weights and batches), each also with
``channels_last: true`` when ``--channels-last`` is given. Each round runs one
``Trainer().step`` of each context on the same batch (zero_grad, the forward and the
loss under ``torch.autocast(cpu, bfloat16)`` or disabled, backward, SGD), in an order
that alternates from round to round, after one warm-up step each. Each step is timed
by the process's CPU time (the ratio is judged on it, ``--clock``) and the wall clock;
torch runs ``--threads`` intra-op threads (1 by default; the machine is shared, and one
thread's CPU time is steady where wall time is not).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hatcli
from benchmarks.common import table, write
from hatcli.engine.loop import Trainer, to_device
from hatcli.engine.stage import build_context

SPEC = """\
version: 1
name: amp
seed: 0
model: {type: ResNet18, width: WIDTH}
data:
  train: {type: NpzArrays, path: "{spec_dir}/data.npz", batch_size: BATCH, drop_last: true}
stages:
  float:
    optimizer: {type: SGD, lr: 0.01, momentum: 0.9}
    num_steps: 1000
    log_interval: 1000000
    device: cpu
    amp: AMP
    channels_last: CL
"""


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return platform.machine()
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
    return ", ".join(f for f in wanted if f in flags) or "no AVX-512"


def timed(step: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    trainer = Trainer()
    steps: dict[str, Any] = {}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        np.savez(
            folder / "data.npz",
            inputs=rng.standard_normal((args.batch_size, 3, 32, 32), dtype=np.float32),
            targets=rng.integers(0, 10, args.batch_size, dtype=np.int64),
        )
        for amp in ("off", "bf16"):
            text = SPEC.replace("WIDTH", str(args.width)).replace("BATCH", str(args.batch_size))
            text = text.replace("AMP", amp).replace("CL", str(args.channels_last).lower())
            path = folder / f"spec-{amp}.yaml"
            path.write_text(text)
            spec = hatcli.load_spec(path, work_dir=folder / f"work-{amp}")
            ctx = build_context(spec, "float")
            assert ctx.amp == amp, ctx.amp
            ctx.model.train()
            batch = to_device(next(iter(ctx.data_loaders["train"])), ctx.device, ctx.channels_last)

            def step(ctx: Any = ctx, batch: Any = batch) -> None:
                trainer.step(ctx, batch)

            step()  # warm-up: allocator, autocast's weight casts, oneDNN primitives
            assert ctx.loss is not None
            losses[amp] = ctx.loss
            steps[amp] = step
        wall: dict[str, list[float]] = {k: [] for k in steps}
        cpu: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(args.rounds):
            for amp in ("off", "bf16") if r % 2 == 0 else ("bf16", "off"):
                w, c = timed(steps[amp])
                wall[amp].append(w)
                cpu[amp].append(c)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    med = med_cpu if args.clock == "cpu" else med_wall
    rows = [
        {
            "model": f"ResNet18 (width {args.width}, 3x32x32)",
            "batch": args.batch_size,
            "channels_last": args.channels_last,
            "float32 ms": round(med_cpu["off"] * 1000),
            "bf16 ms": round(med_cpu["bf16"] * 1000),
            f"bf16/float32 ({args.clock})": round(med["bf16"] / med["off"], 3),
            "speed-up": f"{med['off'] / med['bf16']:.2f}x",
            "float32 wall ms": round(med_wall["off"] * 1000),
            "bf16 wall ms": round(med_wall["bf16"] * 1000),
            "first loss float32 / bf16": f"{losses['off']:.4f} / {losses['bf16']:.4f}",
        }
    ]
    print(
        f"Float stage training step (Trainer.step), amp: bf16 vs off, CPU ({cpu_flags()}), "
        f"{args.threads} thread(s); medians of {args.rounds} interleaved rounds "
        f"(ms columns: process CPU time):"
    )
    print(table(rows, list(rows[0])))
    name = "amp-channels-last" if args.channels_last else "amp"
    print(f"written: {write(name, rows)} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
