"""The built-in datasets on small generated files, and ImageFolder in a spec end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hat_datasets.digits import digits
from hat_datasets.image_folder import ImageFolder
from hat_datasets.npz_arrays import npz_arrays
from PIL import Image

import hatcli
from hatcli.errors import DataError

RED = (255, 0, 51)  # 1.0, 0.0, 0.2 after scaling to [0, 1]


def make_image_folder(root: Path, size: tuple[int, int] = (5, 7)) -> Path:
    """``dog`` made before ``cat``: 3 RGB dogs, 3 grayscale cats; a text file to ignore."""
    width, height = size
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    for i in range(3):
        Image.new("RGB", (width, height), RED).save(root / "dog" / f"{i}.png")
        Image.new("L", (width, height), 40 * (i + 1)).save(root / "cat" / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_follow_sorted_folder_names(tmp_path: Path) -> None:
    dataset = ImageFolder(str(make_image_folder(tmp_path / "pets")))
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset) == 6
    assert [dataset[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]


def test_image_folder_rgb_values_and_shape(tmp_path: Path) -> None:
    dataset = ImageFolder(str(make_image_folder(tmp_path / "pets")))
    cat, _ = dataset[1]
    dog, _ = dataset[3]
    assert cat.shape == dog.shape == (3, 7, 5) and dog.dtype == torch.float32
    expected_dog = torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1).expand(3, 7, 5)
    torch.testing.assert_close(dog, expected_dog)
    torch.testing.assert_close(cat, torch.full((3, 7, 5), 80 / 255))


def test_image_folder_grayscale_resize_and_normalise(tmp_path: Path) -> None:
    root = str(make_image_folder(tmp_path / "pets"))
    dataset = ImageFolder(root, image_size=[4, 6], grayscale=True, mean=[0.5], std=[0.25])
    cat, label = dataset[0]
    assert cat.shape == (1, 4, 6) and label == 0
    torch.testing.assert_close(cat, torch.full((1, 4, 6), (40 / 255 - 0.5) / 0.25))

    per_channel = ImageFolder(root, image_size=[2, 3], mean=[0.5, 0.0, 0.2], std=[0.5, 1.0, 0.1])
    dog, label = per_channel[5]
    assert dog.shape == (3, 2, 3) and label == 1
    torch.testing.assert_close(dog, torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 2, 3))


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(str(tmp_path / "missing"))

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (2, 2)).save(flat / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(str(flat))

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolder(str(empty))

    with pytest.raises(ValueError, match="std needs 1 or 3 values, got 2"):
        ImageFolder(str(make_image_folder(tmp_path / "pets")), std=[0.5, 0.5])


def test_image_folder_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets")
    (root / "dog" / "9-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    dataset = ImageFolder(str(root))
    assert len(dataset) == 7
    dataset[0]  # the good ones still read
    with pytest.raises(DataError, match=r"cannot read image .*9-broken\.png"):
        dataset[6]


def test_image_over_the_pixel_limit_is_refused_not_warned(tmp_path: Path, monkeypatch) -> None:
    root = make_image_folder(tmp_path / "pets")  # 5x7 = 35 pixels each
    dataset = ImageFolder(str(root))
    assert dataset.source == str(root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30)  # Pillow warns up to 60, then raises
    with pytest.raises(DataError, match=r"cannot read image .*0\.png: .*decompression bomb"):
        dataset[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(DataError, match=r"cannot read image .*0\.png: .*decompression bomb"):
        dataset[0]


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    path = tmp_path / "arrays.npz"
    inputs = np.arange(24, dtype=np.uint8).reshape(4, 2, 3)
    np.savez(path, x=inputs, y=np.array([3, 1, 4, 1], dtype=np.int32))
    return path


def test_npz_arrays_with_custom_keys_and_scale(npz_file: Path) -> None:
    dataset = npz_arrays(str(npz_file), inputs_key="x", targets_key="y", scale=0.5)
    assert len(dataset) == 4
    inputs, targets = dataset.tensors
    assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
    assert inputs.shape == (4, 2, 3)
    torch.testing.assert_close(inputs, torch.arange(24.0).reshape(4, 2, 3) * 0.5)
    assert targets.tolist() == [3, 1, 4, 1]


def test_npz_arrays_errors(npz_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        npz_arrays(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match=r"has no array 'inputs'; it holds: x, y"):
        npz_arrays(str(npz_file))

    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, inputs=np.zeros((5, 2)), targets=np.zeros(3))
    with pytest.raises(ValueError, match="inputs has 5 samples but targets has 3"):
        npz_arrays(str(uneven))

    not_npz = tmp_path / "truncated.npz"
    not_npz.write_bytes(npz_file.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"truncated\.npz is not a readable \.npz file"):
        npz_arrays(str(not_npz))

    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npz is not a readable \.npz file"):
        npz_arrays(str(text))

    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match=r"single\.npz holds a single array"):
        npz_arrays(str(single))


def _npz(tmp_path: Path, inputs: np.ndarray, targets: np.ndarray) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, inputs=inputs, targets=targets)
    return str(path)


def test_npz_arrays_names_its_file_as_source(npz_file: Path) -> None:
    dataset = npz_arrays(str(npz_file), inputs_key="x", targets_key="y")
    assert dataset.source == str(npz_file)


def test_npz_whole_number_float_targets_are_accepted(tmp_path: Path) -> None:
    dataset = npz_arrays(_npz(tmp_path, np.zeros((3, 2)), np.array([0.0, 2.0, 1.0])))
    assert dataset.tensors[1].dtype == torch.int64
    assert dataset.tensors[1].tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("targets", "fragment"),
    [
        (np.array([0.0, 2.7, 1.0]), r"targets holds 2\.7 \(sample 1\); targets are class indices"),
        (np.array([0.0, np.nan, 1.0]), r"targets holds nan \(sample 1\)"),
        (np.array([0.0, 1.0, np.inf]), r"targets holds inf \(sample 2\)"),
        (np.array([1e19, 1.0, 0.0]), r"targets holds 1e\+19 \(sample 0\)"),
        (np.array([True, False, True]), "targets holds booleans; targets are class indices"),
        (np.array([1 + 0j, 2, 0]), "targets holds complex numbers"),
        (np.array(["cat", "dog", "cat"]), "targets holds text"),
        (np.array([2**63, 0, 1], dtype=np.uint64), "too large for a class index"),
    ],
    ids=["fraction", "nan", "inf", "beyond-int64", "bool", "complex", "text", "uint64"],
)
def test_npz_targets_that_are_not_class_indices_are_refused(
    tmp_path: Path, targets: np.ndarray, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        npz_arrays(_npz(tmp_path, np.zeros((3, 2)), targets))


@pytest.mark.parametrize(
    ("inputs", "scale", "fragment"),
    [
        (
            np.array([[0.0, 1.0], [np.nan, 2.0], [np.nan, 0.0]]),
            1.0,
            r"2 non-finite values .* sample 1",
        ),
        (np.array([[0.0, 1.0], [0.0, 2.0], [-np.inf, 0.0]]), 1.0, r"NaN or infinite as float32\)"),
        (np.array([[0.0, 1.0], [0.0, 1e39], [0.0, 0.0]]), 1.0, r"1 non-finite values .* sample 1"),
        (np.ones((3, 2), dtype=np.float32) * 1e30, 1e10, r"as float32 times scale 1e\+10\)"),
        (np.ones((3, 2), dtype=np.complex64), 1.0, "inputs holds complex numbers, not numbers"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), 1.0, "inputs holds text, not numbers"),
    ],
    ids=["nan", "inf", "float32-overflow", "scale-overflow", "complex", "text"],
)
def test_npz_inputs_that_are_not_finite_numbers_are_refused(
    tmp_path: Path, inputs: np.ndarray, scale: float, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        npz_arrays(_npz(tmp_path, inputs, np.zeros(3, dtype=np.int64)), scale=scale)


def test_npz_object_and_scalar_arrays_are_refused(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}, None, 3], dtype=object)
    with pytest.raises(ValueError, match=r"inputs holds Python objects .* does not load"):
        npz_arrays(_npz(tmp_path, objects, np.zeros(3, dtype=np.int64)))
    with pytest.raises(ValueError, match="targets is a single value, not an array of samples"):
        npz_arrays(_npz(tmp_path, np.zeros((3, 2)), np.array(1)))


def _rows(dataset: torch.utils.data.TensorDataset) -> Counter[bytes]:
    images, targets = dataset.tensors
    return Counter(
        image.numpy().tobytes() + bytes([int(t)]) for image, t in zip(images, targets, strict=True)
    )


def test_digits_splits_partition_the_data_deterministically() -> None:
    train, val, every = digits("train"), digits("val"), digits("all")
    assert (len(train), len(val), len(every)) == (1438, 359, 1797)
    assert _rows(train) + _rows(val) == _rows(every)
    again = digits("val")
    assert torch.equal(again.tensors[0], val.tensors[0])
    assert torch.equal(again.tensors[1], val.tensors[1])


def test_digits_values() -> None:
    images, targets = digits("all").tensors
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert targets.dtype == torch.int64 and set(targets.tolist()) == set(range(10))


SPEC = """\
version: 1
name: folders
model: {{type: DigitsNet, num_classes: 2, width: 4, in_channels: 1}}
data:
  train: {{type: ImageFolder, root: {train}, grayscale: true, batch_size: 4, shuffle: true}}
  val: {{type: ImageFolder, root: {val}, grayscale: true, image_size: [8, 8]}}
stages:
  float:
    optimizer: {{type: SGD, lr: 0.1}}
    num_epochs: 1
    callbacks:
      - {{type: Validation, data: val}}
"""


def _digit_folders(root: Path) -> Path:
    for label, shade in (("dark", 20), ("light", 230)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (8, 8), shade + i).save(root / label / f"{i}.png")
    return root


def test_image_folder_spec_trains_end_to_end(tmp_path: Path) -> None:
    train = _digit_folders(tmp_path / "train")
    val = _digit_folders(tmp_path / "val")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC.format(train=train.resolve(), val=val.resolve()))
    spec = hatcli.load_spec(spec_path, work_dir=tmp_path / "work")
    batch, targets = next(iter(hatcli.build_data_loader(spec, "train", "float")))
    assert batch.shape == (4, 1, 8, 8) and set(targets.tolist()) <= {0, 1}

    summary = hatcli.run_stage(spec, "float")
    assert (summary["epochs"], summary["steps"]) == (1, 3)  # 10 images, batches of 4
    assert 0.0 <= summary["metrics"]["accuracy"] <= 1.0
    written = json.loads((tmp_path / "work" / "float" / "summary.json").read_text())
    assert written["metrics"] == summary["metrics"]


@pytest.mark.slow
def test_missing_image_folder_is_located_in_the_spec(tmp_path: Path, run_hat) -> None:
    val = _digit_folders(tmp_path / "val")
    text = SPEC.format(train=tmp_path / "nowhere", val=val)
    (tmp_path / "spec.yaml").write_text(text)
    result = run_hat("train", "spec.yaml", "--stage", "float", "--work-dir", "work")
    assert result.returncode == 2, result.stderr
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("  train:"))
    column = text.splitlines()[line - 1].index("{") + 1
    assert f"spec.yaml:{line}:{column}: data.train: ImageFolder:" in result.stderr
    assert "not found" in result.stderr and "nowhere" in result.stderr
    assert not (tmp_path / "work" / "float" / "summary.json").exists()


@pytest.mark.slow
def test_unreadable_image_in_a_worker_is_a_one_line_input_error(tmp_path: Path, run_hat) -> None:
    train = _digit_folders(tmp_path / "train")
    (train / "dark" / "broken.png").write_bytes(b"not an image")
    text = SPEC.format(train=train, val=_digit_folders(tmp_path / "val"))
    text = text.replace("shuffle: true}", "shuffle: true, num_workers: 1}")
    (tmp_path / "spec.yaml").write_text(text)
    result = run_hat("train", "spec.yaml", "--stage", "float", "--work-dir", "work", "-q")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read image" in lines[0] and "broken.png" in lines[0]


def test_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    root = _digit_folders(tmp_path / "mixed")
    Image.new("L", (9, 8), 3).save(root / "dark" / "wide.png")
    dataset = ImageFolder(str(root), grayscale=True)
    shapes = {
        dataset[i][0].shape for i in range(len(dataset)) if "wide" not in str(dataset.samples[i][0])
    }
    assert shapes == {(1, 8, 8)}
    wide = next(i for i, (p, _) in enumerate(dataset.samples) if p.name == "wide.png")
    with pytest.raises(DataError, match=r"wide\.png is 9x8 but others are 8x8; set image_size"):
        dataset[wide]
    resized = ImageFolder(str(root), grayscale=True, image_size=[8, 8])
    assert resized[wide][0].shape == (1, 8, 8)
