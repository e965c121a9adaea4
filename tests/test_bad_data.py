"""Bad data reaching the model: each is one line and exit 2 naming the split (and the
file where known), never a traceback or a run that reports nonsense metrics."""

from __future__ import annotations

import struct
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plugin_site import write_plugin_site
from torch import nn

from hatcli.engine.data_checks import checked_forward
from hatcli.engine.metric import MeanLoss, TopKAccuracy
from hatcli.errors import DataError
from hatcli.quant import convert, prepare_qat

MODEL = "{type: DigitsNet, num_classes: 10, width: 4, in_channels: 1}"


def write_spec(folder: Path, train: str, val: str, float_callbacks: str = "") -> Path:
    """Stage ``float`` trains 1 epoch then validates; stage ``eval`` only validates."""
    spec = folder / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
            version: 1
            name: bad-data
            model: {MODEL}
            data:
              train: {train}
              val: {val}
            stages:
              float:
                optimizer: {{type: SGD, lr: 0.1}}
                num_epochs: 1
                callbacks:
                  - {{type: Validation, data: val}}
                  {float_callbacks}
              eval:
                num_epochs: 0
                callbacks:
                  - {{type: Validation, data: val}}
            """)
    )
    return spec


def write_npz(path: Path, inputs: np.ndarray, targets: np.ndarray) -> str:
    np.savez(path, inputs=inputs, targets=targets)
    return f"{{type: NpzArrays, path: {path}, batch_size: 8}}"


def digits_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), np.arange(n) % 10


def good_npz(folder: Path, name: str, n: int = 16) -> str:
    return write_npz(folder / name, *digits_like(n))


def one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def train(run_hat, spec: Path, stage: str = "float", env: dict[str, str] | None = None):
    return run_hat("train", spec, "--stage", stage, "--work-dir", "work", "-q", env=env)


@pytest.mark.slow
def test_fractional_targets_are_refused_naming_the_split_and_file(tmp_path: Path, run_hat) -> None:
    inputs, targets = digits_like(16)
    fractional = write_npz(tmp_path / "train.npz", inputs, targets + np.where(targets == 2, 0.7, 0))
    spec = write_spec(tmp_path, fractional, good_npz(tmp_path, "val.npz"))
    one_line_error(train(run_hat, spec), "data.train: NpzArrays:", "train.npz", "2.7", "sample 2")
    assert not (tmp_path / "work" / "float-checkpoint-last.pth.tar").exists()


@pytest.mark.slow
def test_empty_validation_split_is_an_input_error_before_training(tmp_path: Path, run_hat) -> None:
    inputs, targets = digits_like(16)
    empty = write_npz(tmp_path / "val.npz", inputs[:0], targets[:0])
    spec = write_spec(tmp_path, good_npz(tmp_path, "train.npz"), empty)
    line = one_line_error(train(run_hat, spec), "stages.float.callbacks[0]", "val data", "val.npz")
    assert "no samples" in line
    assert not (tmp_path / "work" / "float-checkpoint-last.pth.tar").exists()


@pytest.mark.slow
def test_validation_split_without_a_batch_is_an_input_error(tmp_path: Path, run_hat) -> None:
    val = good_npz(tmp_path, "val.npz", n=3).replace(
        "batch_size: 8", "batch_size: 4, drop_last: true"
    )
    spec = write_spec(tmp_path, good_npz(tmp_path, "train.npz"), val)
    one_line_error(train(run_hat, spec, "eval"), "val data", "gives no batch", "3 samples")


def test_metrics_of_no_samples_are_nan_not_zero() -> None:
    for metric in (TopKAccuracy(1), MeanLoss()):
        metric.reset()
        assert all(np.isnan(value) for value in metric.compute().values())


@pytest.mark.slow
def test_non_finite_validation_loss_warns_and_is_never_best(tmp_path: Path, run_hat) -> None:
    inputs, targets = digits_like(6)
    huge = write_npz(tmp_path / "val.npz", np.full_like(inputs, 1e38), targets)  # finite
    checkpoint = "- {type: Checkpoint, monitor_metric_key: loss, mode: min}"
    spec = write_spec(tmp_path, good_npz(tmp_path, "train.npz"), huge, checkpoint)
    result = train(run_hat, spec)
    assert result.returncode == 0, result.stderr
    assert "warning: val: the validation loss is nan" in result.stderr
    assert (tmp_path / "work" / "float-checkpoint-last.pth.tar").exists()
    assert not (tmp_path / "work" / "float-checkpoint-best.pth.tar").exists()


NAN_PLUGIN = """
import torch
from torch.utils.data import TensorDataset
import hatcli


def nan_data(nan_at: int = 0) -> TensorDataset:
    inputs = torch.rand(16, 1, 8, 8)
    inputs[nan_at, 0, 3, 3] = float("nan")
    return TensorDataset(inputs, torch.arange(16) % 10)


@hatcli.hookimpl
def hat_register_datasets(register):
    schema = {"type": "object", "properties": {"nan_at": {"type": "integer"}}}
    register("NanData", nan_data, schema)
"""


@pytest.mark.parametrize(
    ("split", "stage", "fragment"),
    [
        ("train", "float", "train data has non-finite inputs in this batch (epoch 0, step 2)"),
        ("val", "eval", "val data has non-finite inputs in this batch (batch 2 of the validation"),
    ],
)
@pytest.mark.slow
def test_nan_inputs_are_a_data_error_naming_the_split(
    tmp_path: Path, run_hat, split: str, stage: str, fragment: str
) -> None:
    env = write_plugin_site(tmp_path / "site", "hat_test_nan", NAN_PLUGIN)
    nan = "{type: NanData, nan_at: 9, batch_size: 8}"  # the second batch
    good = good_npz(tmp_path, f"{split}-good.npz")
    spec = write_spec(tmp_path, *((nan, good) if split == "train" else (good, nan)))
    one_line_error(train(run_hat, spec, stage, env), fragment)


@pytest.mark.parametrize("label", [12, -1])
@pytest.mark.slow
def test_training_labels_out_of_range_name_the_split_and_file(
    tmp_path: Path, run_hat, label: int
) -> None:
    inputs, targets = digits_like(16)
    targets[5] = label
    bad = write_npz(tmp_path / "train.npz", inputs, targets)
    spec = write_spec(tmp_path, bad, good_npz(tmp_path, "val.npz"))
    one_line_error(
        train(run_hat, spec),
        f"train data from {tmp_path / 'train.npz'} has label {label}",
        "the model's 10 classes are 0..9 (epoch 0, step 1)",
    )


@pytest.mark.slow
def test_validation_labels_out_of_range_name_the_split(tmp_path: Path, run_hat) -> None:
    inputs, targets = digits_like(16)
    targets[10] = 10
    bad = write_npz(tmp_path / "val.npz", inputs, targets)
    spec = write_spec(tmp_path, good_npz(tmp_path, "train.npz"), bad)
    one_line_error(
        train(run_hat, spec, "eval"),
        f"val data from {tmp_path / 'val.npz'} has label 10",
        "(batch 2 of the validation after step 0)",
    )


@pytest.mark.slow
def test_rgb_images_for_a_one_channel_model_name_the_split_and_folder(
    tmp_path: Path, run_hat
) -> None:
    root = tmp_path / "images"
    for label, shade in (("dark", 20), ("light", 230)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (shade, shade, i)).save(root / label / f"{i}.png")
    images = f"{{type: ImageFolder, root: {root}, batch_size: 4}}"
    spec = write_spec(tmp_path, images, good_npz(tmp_path, "val.npz"))
    one_line_error(
        train(run_hat, spec),
        f"train data from {root} has inputs of shape [4, 3, 8, 8], which the model does not take",
        "to have 1 channels, but got 3 channels",
    )


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of any size, written without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(
        signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.slow
def test_decompression_bomb_image_names_the_split_and_file(tmp_path: Path, run_hat) -> None:
    root = tmp_path / "val-images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        Image.new("L", (8, 8), 7).save(root / label / "0.png")
    side = 13_400  # 179.6 million pixels: over twice Pillow's limit, so an error
    write_blank_png(root / "b" / "bomb.png", side, side)
    images = f"{{type: ImageFolder, root: {root}, grayscale: true, image_size: [8, 8]}}"
    spec = write_spec(tmp_path, good_npz(tmp_path, "train.npz"), images)
    one_line_error(
        train(run_hat, spec, "eval"),
        f"val data: cannot read image {root / 'b' / 'bomb.png'}",
        "decompression bomb",
    )


def digits_net() -> nn.Module:
    from hat_models.digits_net import DigitsNet

    torch.manual_seed(0)
    return DigitsNet(num_classes=10, width=4, in_channels=1)


def test_integer_model_rejecting_the_channels_is_a_data_error() -> None:
    model = digits_net()
    model.fuse_model()
    model.set_qconfig()
    qat = prepare_qat(model, "fuse_bn")
    qat(torch.rand(4, 1, 8, 8))  # the observers' first ranges
    integer = convert(qat.eval())
    with pytest.raises(DataError, match=r"has 3-channel inputs .* first convolution takes 1"):
        checked_forward(
            integer, nn.CrossEntropyLoss(), torch.rand(4, 3, 8, 8), torch.zeros(4), "val data", "b"
        )


def test_linear_model_rejecting_the_features_is_a_data_error() -> None:
    model = nn.Linear(64, 10)
    with pytest.raises(DataError, match=r"train data has inputs of shape \[4, 192\].*4x192"):
        checked_forward(
            model,
            nn.CrossEntropyLoss(),
            torch.rand(4, 192),
            torch.zeros(4).long(),
            "train data",
            "s",
        )


def test_a_model_bug_is_not_called_a_data_error() -> None:
    broken = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(8, 4, 3))  # 4 channels into 8
    with pytest.raises(RuntimeError, match="expected input"):
        checked_forward(
            broken, nn.CrossEntropyLoss(), torch.rand(2, 1, 8, 8), torch.zeros(2), "train data", "s"
        )

    def failing_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise IndexError("a bug in the loss")

    with pytest.raises(IndexError, match="a bug in the loss"):
        checked_forward(
            nn.Linear(3, 5), failing_loss, torch.rand(2, 3), torch.tensor([0, 4]), "train data", "s"
        )


def test_ignored_labels_are_not_out_of_range() -> None:
    loss_fn = nn.CrossEntropyLoss()  # ignore_index -100
    _, loss = checked_forward(
        nn.Linear(3, 5), loss_fn, torch.rand(2, 3), torch.tensor([-100, 4]), "train data", "s"
    )
    assert torch.isfinite(loss)


def test_labels_out_of_range_for_another_loss_that_fails_on_them() -> None:
    def nll(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.nll_loss(outputs.log_softmax(1), targets)

    with pytest.raises(DataError, match=r"train data has label 5; the model's 5 classes"):
        checked_forward(
            nn.Linear(3, 5), nll, torch.rand(2, 3), torch.tensor([0, 5]), "train data", "s"
        )
