"""A data split's loader keys: workers (``auto`` too), pinning, prefetching, and
transforms whose random draws are the same whatever the workers, also across a resume."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hat_datasets.digits import digits
from PIL import Image
from plugin_site import write_plugin_site
from test_resume import KILL_PLUGIN, assert_same_final_state

from hatcli.engine import stage as stage_module
from hatcli.engine.stage import build_data_loader, loader_workers
from hatcli.spec.spec import load_spec

AUGMENT = """[{type: RandomCrop, size: 8, padding: 1}, {type: RandomHorizontalFlip},
               {type: ColorJitter, brightness: 0.3}, {type: Normalize, mean: [0.3], std: [0.4]}]"""


def digit_folder(root: Path, count: int = 96) -> Path:
    """``count`` of the bundled digits as 8x8 grayscale PNGs, a folder per class."""
    images, targets = digits("all").tensors
    for i in range(count):
        folder = root / str(int(targets[i]))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (images[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i}.png")
    return root


def write_spec(folder: Path, data: Path, workers: str, stage: str = "  float: {}") -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(f"""\
version: 1
name: loading
seed: 5
model: {{type: DigitsNet, width: 8}}
data:
  train:
    type: ImageFolder
    root: {data}
    grayscale: true
    batch_size: 16
    shuffle: true
    num_workers: {workers}
    transforms: {AUGMENT}
  val: {{type: Digits, split: val, batch_size: 512}}
stages:
{stage}
""")
    return spec


def epochs_of_batches(spec: Path, epochs: int = 2) -> list[torch.Tensor]:
    loader = build_data_loader(load_spec(spec), "train", "float")
    found = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        found.extend(inputs for inputs, _ in loader)
    return found


def test_augmented_batches_are_the_same_with_and_without_workers(tmp_path: Path) -> None:
    data = digit_folder(tmp_path / "digits", 48)
    without = epochs_of_batches(write_spec(tmp_path, data, "0"))
    with_workers = epochs_of_batches(write_spec(tmp_path, data, "2"))
    assert len(without) == len(with_workers) == 6
    assert all(torch.equal(a, b) for a, b in zip(without, with_workers, strict=True))
    assert not torch.equal(without[0], without[3])  # epoch 1 is shuffled and augmented anew
    assert without[0].shape == (16, 1, 8, 8)


def test_loader_keys_reach_torchs_loader(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("""\
version: 1
name: keys
model: {type: DigitsNet}
data:
  train: {type: Digits, num_workers: 3, persistent_workers: true, prefetch_factor: 5,
          pin_memory: true}
  val: {type: Digits, split: val, persistent_workers: true}
stages:
  float: {num_epochs: 0}
""")
    loaded = load_spec(spec)
    train = build_data_loader(loaded, "train", "float")
    assert train.num_workers == 3 and train.persistent_workers and train.prefetch_factor == 5
    assert train.pin_memory == torch.cuda.is_available()  # pinning only helps a GPU
    val = build_data_loader(loaded, "val", "float")
    assert val.num_workers == 0 and not val.persistent_workers  # no workers to keep


def test_num_workers_auto_shares_the_cores_among_local_ranks(monkeypatch) -> None:
    monkeypatch.setattr(stage_module, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert loader_workers("auto") == 16 and loader_workers(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers("auto") == 4
    monkeypatch.setattr(stage_module, "available_cores", lambda: 5)
    assert loader_workers("auto") == 0  # one core each: load in the training process


def test_num_workers_must_be_a_count_or_auto(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tmp_path, "many")
    with pytest.raises(Exception, match="num_workers"):
        load_spec(spec)


FLOAT_STAGE = """\
  float:
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}
    num_epochs: 3
    device: cpu
    callbacks:
      - {type: KillSwitch}
      - {type: Checkpoint, name_prefix: float-, interval_by: step, save_interval: 4}"""


@pytest.mark.slow
def test_killed_and_resumed_with_workers_and_augmentation_is_bit_exact(
    hat_cli, tmp_path: Path
) -> None:
    env = write_plugin_site(tmp_path / "site", "hat_test_kill", KILL_PLUGIN)
    data = digit_folder(tmp_path / "digits")
    reference = tmp_path / "reference"
    reference.mkdir()
    spec = write_spec(reference, data, "0", FLOAT_STAGE)  # no workers: the same draws
    done = hat_cli("train", spec, "--stage", "float", "--work-dir", reference, "--quiet", env=env)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    killed.mkdir()
    spec = write_spec(killed, data, "2\n    persistent_workers: true", FLOAT_STAGE)
    kill = {**env, "HAT_TEST_KILL_AT_STEP": "10"}  # epoch 1 of 6 steps, 2 after a save
    run = hat_cli("train", spec, "--stage", "float", "--work-dir", killed, "--quiet", env=kill)
    assert run.returncode == -signal.SIGKILL, run.stderr
    resumed = hat_cli("resume", spec, "--stage", "float", "--work-dir", killed, "--quiet", env=env)
    assert resumed.returncode == 0, resumed.stderr
    last = "float-checkpoint-last.pth.tar"
    assert_same_final_state(reference / last, killed / last)
