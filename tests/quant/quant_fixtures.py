"""Shared models for the quantization tests: a float DigitsNet trained briefly on the
bundled digits, and its QAT versions (one per qat_mode), built once per session."""

from __future__ import annotations

import copy
import importlib.resources

import numpy as np
import torch
import torch.nn.functional as F
from hat_models.digits_net import DigitsNet
from torch import nn

from hatcli.quant import QATMode, prepare_qat


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    with importlib.resources.files("hat_datasets").joinpath("data/digits.npz").open("rb") as f:
        arrays = np.load(f)
        images, targets = arrays["images"], arrays["targets"]
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(targets.astype(np.int64))


_CACHE: dict[str, nn.Module] = {}


def _train(model: nn.Module, epochs: int, lr: float, seed: int) -> None:
    x, y = digits_data()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def float_digits_net() -> DigitsNet:
    """A DigitsNet trained for 2 epochs (deterministic); a fresh copy each call."""
    if "float" not in _CACHE:
        torch.manual_seed(0)
        model = DigitsNet()
        _train(model, epochs=2, lr=0.05, seed=0)
        _CACHE["float"] = model
    return copy.deepcopy(_CACHE["float"])  # type: ignore[return-value]


def qat_digits_net(mode: QATMode | str, out_qconfig: bool = True) -> nn.Module:
    """The float net fused, prepared in ``mode`` and QAT-trained for one epoch, in eval."""
    key = f"{QATMode(mode).value}-{out_qconfig}"
    if key not in _CACHE:
        model = float_digits_net()
        model.fuse_model()
        model.set_qconfig()
        if not out_qconfig:
            model.classifier.qconfig = model.qconfig
        qat = prepare_qat(model, mode)
        _train(qat, epochs=1, lr=0.01, seed=1)
        _CACHE[key] = qat
    return copy.deepcopy(_CACHE[key])
