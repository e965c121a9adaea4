"""The built-in transforms: shapes, value ranges, determinism under a seed, and their
parameters checked by their schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hatcli import plugins
from hatcli.engine.transforms import TransformedDataset, sample_seed, to_tensor
from hatcli.errors import SpecError
from hatcli.spec.spec import load_spec


def build(name: str, **params: Any) -> Any:
    return plugins.get_component("transforms", name).factory(**params)


def picture(height: int = 20, width: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def run(transform: Any, sample: Any, seed: int = 0) -> Any:
    return transform(sample, torch.Generator().manual_seed(seed))


def same(a: Any, b: Any) -> bool:
    return torch.equal(to_tensor(a) if isinstance(a, Image.Image) else a, to_tensor(b))


RANDOM = {
    "RandomCrop": {"size": 16, "padding": 4},
    "RandomResizedCrop": {"size": [12, 10]},
    "RandomHorizontalFlip": {},
    "ColorJitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_transforms_repeat_under_a_seed_and_vary_across_seeds(name: str) -> None:
    transform = build(name, **RANDOM[name])
    image = picture()
    assert same(run(transform, image, 5), run(transform, image, 5))
    outputs = [to_tensor(run(transform, image, seed)) for seed in range(8)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_geometric_transforms_give_the_asked_size() -> None:
    image = picture(20, 30)
    assert run(build("Resize", size=[8, 9]), image).size == (9, 8)
    assert run(build("Resize", size=10), image).size == (15, 10)  # shorter side, aspect kept
    assert run(build("CenterCrop", size=[10, 12]), image).size == (12, 10)
    assert run(build("RandomCrop", size=[20, 30], padding=4), image).size == (30, 20)
    assert run(build("RandomResizedCrop", size=7), image).size == (7, 7)


def test_random_crop_with_padding_moves_the_picture_and_fills_with_zero() -> None:
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    crops = [to_tensor(run(build("RandomCrop", size=8, padding=2), white, s)) for s in range(20)]
    assert all(c.shape == (3, 8, 8) for c in crops)
    assert any(bool((c == 0).any()) for c in crops)  # some show the zero padding
    assert all(c.min() >= 0 and c.max() <= 1 for c in crops)


def test_horizontal_flip_mirrors_an_image_and_a_tensor() -> None:
    image = picture(4, 5)
    flipped = run(build("RandomHorizontalFlip", p=1.0), image)
    assert torch.equal(to_tensor(flipped), to_tensor(image).flip(-1))
    tensor = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(run(build("RandomHorizontalFlip", p=1.0), tensor), tensor.flip(-1))
    assert run(build("RandomHorizontalFlip", p=0.0), tensor) is tensor


def test_center_crop_of_a_tensor_matches_the_image_crop() -> None:
    image = picture(9, 11)
    crop = build("CenterCrop", size=[5, 7])
    assert torch.equal(run(crop, to_tensor(image)), to_tensor(run(crop, image)))


def test_color_jitter_keeps_size_mode_and_range() -> None:
    image = picture()
    out = run(build("ColorJitter", brightness=[0.5, 1.5], hue=[-0.5, 0.5]), image, 3)
    assert out.size == image.size and out.mode == "RGB"
    assert run(build("ColorJitter"), image) is image  # no jitter asked: unchanged


def test_to_tensor_and_normalize_values() -> None:
    image = Image.new("RGB", (3, 2), (255, 0, 51))
    tensor = run(build("ToTensor"), image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    normalized = run(build("Normalize", mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.1]), image)
    torch.testing.assert_close(normalized[:, 1, 2], torch.tensor([1.0, -2.0, -3.0]))


def test_an_image_transform_on_a_tensor_says_where_it_belongs() -> None:
    with pytest.raises(TypeError, match="put ColorJitter before ToTensor"):
        run(build("ColorJitter", brightness=0.2), torch.zeros(3, 4, 4))


def test_the_dataset_wrapper_draws_per_sample_epoch_and_rank() -> None:
    images = [picture(seed=i) for i in range(4)]

    class Pictures(torch.utils.data.Dataset[Any]):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> Any:
            raise AssertionError("image() is used when the dataset has it")

        def image(self, index: int) -> tuple[Image.Image, int]:
            return images[index], index

    flip = build("RandomResizedCrop", size=8)
    data = TransformedDataset(Pictures(), [flip], seed=7)
    first, label = data[(2, 0)]
    assert label == 2 and first.shape == (3, 8, 8)
    assert torch.equal(first, data[(2, 0)][0]) and torch.equal(first, data[2][0])
    assert not torch.equal(first, data[(2, 1)][0])  # another epoch, another crop
    assert not torch.equal(first, TransformedDataset(Pictures(), [flip], 7, rank=1)[2][0])
    seeds = {sample_seed(7, e, r, i) for e in range(3) for r in range(2) for i in range(4)}
    assert len(seeds) == 24


BAD_TRANSFORMS = [
    ("{type: RandomHorizontalFlip, p: 2}", "2 is greater than the maximum of 1"),
    ("{type: RandomCrop, padding: 4}", "missing required key 'size'"),
    ("{type: ColorJitter, hue: 0.7}", "is not valid under any of the given schemas"),
    ("{type: Normalize, mean: [0.5], std: [0]}", "less than or equal to the minimum of 0"),
    ("{type: Resize, size: 0}", "is not valid under any of the given schemas"),
    ("{type: RandomFlip}", "unknown transform 'RandomFlip'"),
]


@pytest.mark.parametrize(("node", "expected"), BAD_TRANSFORMS)
def test_each_transform_is_checked_by_its_schema(tmp_path: Path, node: str, expected: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\nname: t\nmodel: {type: DigitsNet}\n"
        "data:\n  train: {type: Digits, transforms: [" + node + "]}\n"
        "stages:\n  float: {num_epochs: 0}\n"
    )
    with pytest.raises(SpecError) as raised:
        load_spec(spec)
    message = str(raised.value)
    assert message.startswith(f"{spec}:5:") and expected in message, message
