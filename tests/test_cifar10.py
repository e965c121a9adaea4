"""Cifar10 reads the binary distribution, written here record by record as the dataset's
page describes it; the pickle distribution and damaged files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hat_datasets.cifar10 import Cifar10

import hatcli


def write_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    """Records of one label byte and 3072 pixel bytes (R, G, B planes, row by row)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    path.write_bytes(records.tobytes())
    return pixels.reshape(-1, 3, 32, 32)


def write_cifar(root: Path, per_file: int = 3) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    written = {}
    for i in range(1, 6):
        labels = [(i + k) % 10 for k in range(per_file)]
        written[f"data_batch_{i}"] = write_batch(folder / f"data_batch_{i}.bin", labels, i)
    written["test_batch"] = write_batch(folder / "test_batch.bin", [9, 0], 0)
    return written


def test_reads_every_train_record_in_file_order(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    train = Cifar10(str(tmp_path), "train")  # the parent of cifar-10-batches-bin
    assert len(train) == 15
    assert [train[i][1] for i in range(3)] == [1, 2, 3] and train[14][1] == 7
    image, label = train[4]  # data_batch_2's second record
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 3
    torch.testing.assert_close(image, torch.from_numpy(written["data_batch_2"][1] / 255.0).float())


def test_test_split_and_image_layout(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    test = Cifar10(str(tmp_path / "cifar-10-batches-bin"), "test")
    assert len(test) == 2 and test[0][1] == 9
    picture, label = test.image(1)
    assert picture.size == (32, 32) and picture.mode == "RGB" and label == 0
    # The red plane's pixel (row 3, column 5) is the image's red at x=5, y=3.
    assert picture.getpixel((5, 3))[0] == written["test_batch"][1, 0, 3, 5]
    assert picture.getpixel((5, 3))[2] == written["test_batch"][1, 2, 3, 5]


def test_the_pickle_distribution_is_refused_naming_the_binary_one(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=r"pickle.*cifar-10-binary\.tar\.gz"):
        Cifar10(str(tmp_path))


def test_damaged_and_missing_files_are_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="not a whole number of 3073-byte records"):
        Cifar10(str(tmp_path))
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3\.bin"):
        Cifar10(str(tmp_path))
    write_batch(folder / "test_batch.bin", [10], 0)
    with pytest.raises(ValueError, match="label 10"):
        Cifar10(str(tmp_path), "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 binary files"):
        Cifar10(str(tmp_path / "empty"))


@pytest.mark.slow
def test_a_spec_trains_on_it_with_the_standard_augmentation(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_file=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
version: 1
name: cifar
model: {{type: ResNet18, width: 4}}
data:
  train:
    type: Cifar10
    root: {tmp_path}
    batch_size: 8
    shuffle: true
    transforms:
      - {{type: RandomCrop, size: 32, padding: 4}}
      - {{type: RandomHorizontalFlip}}
      - {{type: Normalize, mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616]}}
  val:
    type: Cifar10
    root: {tmp_path}
    split: test
    transforms: [{{type: Normalize, mean: [0.5], std: [0.25]}}]
stages:
  float:
    optimizer: {{type: SGD, lr: 0.01}}
    num_steps: 2
    device: cpu
    callbacks: [{{type: Validation}}]
""")
    summary = hatcli.run_stage(hatcli.load_spec(spec, work_dir=tmp_path / "work"), "float")
    assert summary["steps"] == 2 and "accuracy" in summary["metrics"]


def test_the_cifar10_example_validates_and_is_the_one_in_the_docs() -> None:
    root = Path(__file__).resolve().parents[1]
    example = root / "examples" / "cifar10" / "spec.yaml"
    spec = hatcli.load_spec(example)
    assert list(spec.stage_names) == ["float", "calibration", "qat", "int_infer"]
    assert example.read_text() in (root / "docs" / "training.md").read_text()
