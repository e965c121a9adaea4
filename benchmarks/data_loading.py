"""Data loading: one epoch of hat's training DataLoader over an ImageFolder of generated
PNGs with augmentation, ``num_workers: auto`` against ``num_workers: 0``.

    python -m benchmarks.data_loading --images 2000 --size 64 --rounds 3

``--images`` PNGs of ``--size`` x ``--size`` pixels in ``--classes`` class folders are
written to a temporary folder (smooth random colour gradients with noise, so that they
decode like photographs rather than like flat colour). A spec's ``train`` split reads them
with ``ImageFolder`` and the transforms

    RandomResizedCrop (size - size/8), RandomHorizontalFlip,
    ColorJitter (brightness, contrast, saturation 0.4, hue 0.1), ToTensor, Normalize

(``batch_size: --batch-size``, ``shuffle: true``); each variant's loader is built by
``hatcli.engine.stage.build_data_loader`` from that spec with the variant's loader keys:

- ``num_workers: 0``: everything in this process;
- ``num_workers: auto``: the cores this process may use (its CPU affinity) as workers
  (0 when that is one core), started afresh every epoch as torch does by default;
- ``num_workers: auto`` with ``persistent_workers: true``: the workers kept between
  epochs (as ``examples/cifar10/spec.yaml`` sets), so an epoch does not pay their start.

Each round iterates one whole epoch of each loader (the sampler set to the round's
epoch, as the trainer does), in an order that rotates from round to round, after one
warm-up epoch each (the files in the page cache, the persistent workers started). Wall
time: the work runs in other processes. The table gives images/s (medians), the
speed-up over ``num_workers: 0``, the CPU time the training process itself spent per
epoch (what the workers take off it) and that of the workers (those that exit at the
epoch's end), and the load average around the run: a speed-up needs idle cores, and on
a shared machine whose cores are busy the workers only take the loading off the
training process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import hatcli
from benchmarks.common import table, write
from hatcli.engine.sampler import EpochSampler
from hatcli.engine.stage import available_cores, build_data_loader, loader_workers

SPEC = """\
version: 1
name: data_loading
seed: 0
model: {type: DigitsNet}
data:
  train:
    type: ImageFolder
    root: "{spec_dir}/images"
    batch_size: BATCH
    shuffle: true
    LOADER
    transforms:
      - {type: RandomResizedCrop, size: CROP}
      - {type: RandomHorizontalFlip}
      - {type: ColorJitter, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1}
      - {type: ToTensor}
      - {type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
stages:
  float:
    optimizer: {type: SGD, lr: 0.1}
    num_steps: 1
    device: cpu
"""

VARIANTS = {
    "num_workers: 0": "num_workers: 0",
    "num_workers: auto": "num_workers: auto",
    "auto + persistent_workers": "num_workers: auto\n    persistent_workers: true",
}


def write_images(folder: Path, count: int, size: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        directory = folder / f"class_{i % classes}"
        directory.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, (3, 3, 1, 1)).astype(np.float32)
        pixels = a + (b - a) * xs + (c - a) * ys * (1 - xs)
        pixels = pixels.transpose(1, 2, 0) + rng.normal(0, 12, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(directory / f"{i:05d}.png")


def child_seconds() -> float:
    """CPU time of this process's children that have exited (loader workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epoch(loader: Any, number: int) -> int:
    sampler = loader.sampler
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(number)
    images = 0
    for inputs, _ in loader:
        images += int(inputs.shape[0])
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    workers = loader_workers("auto")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder / "images", args.images, args.size, args.classes)
        loaders = {}
        for name, keys in VARIANTS.items():
            directory = folder / name.replace(" ", "_").replace(":", "").replace("+", "")
            directory.mkdir()
            text = SPEC.replace("BATCH", str(args.batch_size)).replace("LOADER", keys)
            text = text.replace("CROP", str(args.size - args.size // 8))
            text = text.replace("{spec_dir}/images", str(folder / "images"))
            (directory / "spec.yaml").write_text(text)
            spec = hatcli.load_spec(directory / "spec.yaml", work_dir=directory / "work")
            loaders[name] = build_data_loader(spec, "train")
        first = {name: next(iter(loader)) for name, loader in loaders.items()}
        reference = first["num_workers: 0"]
        for name, batch in first.items():  # the same batches with or without workers
            assert torch.equal(batch[0], reference[0]) and torch.equal(batch[1], reference[1]), name
        times: dict[str, list[float]] = {name: [] for name in loaders}
        main_cpu: dict[str, list[float]] = {name: [] for name in loaders}
        child_cpu: dict[str, list[float]] = {name: [] for name in loaders}
        load_before = os.getloadavg()[0]
        names = list(loaders)
        for r in range(args.rounds + 1):  # round 0 warms up
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                began, cpu, children = time.perf_counter(), time.process_time(), child_seconds()
                seen = epoch(loaders[name], r)
                if r > 0:
                    times[name].append(time.perf_counter() - began)
                    main_cpu[name].append(time.process_time() - cpu)
                    child_cpu[name].append(child_seconds() - children)
                assert seen == args.images, (name, seen)
        del loaders
        load_after = os.getloadavg()[0]
    base = statistics.median(times["num_workers: 0"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "loader": name,
                "workers": 0 if name == "num_workers: 0" else workers,
                "epoch s": round(median, 2),
                "images/s": round(args.images / median),
                "speed-up": f"{base / median:.2f}x",
                "main CPU s": round(statistics.median(main_cpu[name]), 2),
                # workers that exit at the epoch's end are counted; persistent ones are not
                "workers CPU s": round(statistics.median(child_cpu[name]), 2)
                if "persistent" not in name
                else "-",
                "epoch s (all rounds)": ", ".join(f"{v:.2f}" for v in values),
            }
        )
    print(
        f"One epoch of {args.images} {args.size}x{args.size} PNGs ({args.classes} classes), "
        f"batch {args.batch_size}, RandomResizedCrop + flip + ColorJitter + ToTensor + "
        f"Normalize; medians of {args.rounds} rounds, wall time; {available_cores()} cores "
        f"available, num_workers: auto chose {workers}; load average {load_before:.1f} "
        f"before, {load_after:.1f} after:"
    )
    print(table(rows, list(rows[0])))
    print(f"written: {write('data_loading', rows)} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
