"""Turning a model's quantizers on and off, and trying other ranges, without keeping
the change: each context manager puts every flag and range back as it found it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from hatcli.quant.fake_quantize import FakeQuantize


@contextmanager
def enabled_only(quantizers: Iterable[FakeQuantize], on: Iterable[FakeQuantize]) -> Iterator[None]:
    """Fake quantization on for the quantizers in ``on``, off for the others."""
    every = list(quantizers)
    wanted = {id(fq) for fq in on}
    saved = [bool(fq.fake_quant_enabled) for fq in every]
    try:
        for fq in every:
            fq.enable_fake_quant(id(fq) in wanted)
        yield
    finally:
        for fq, flag in zip(every, saved, strict=True):
            fq.enable_fake_quant(flag)


@contextmanager
def observers_frozen(quantizers: Iterable[FakeQuantize]) -> Iterator[None]:
    """Observers off, so that no pass of the analysis moves a range."""
    every = list(quantizers)
    saved = [bool(fq.observer_enabled) for fq in every]
    try:
        for fq in every:
            fq.disable_observer()
        yield
    finally:
        for fq, flag in zip(every, saved, strict=True):
            fq.enable_observer(flag)


@contextmanager
def clipped_at(ranges: Mapping[FakeQuantize, float]) -> Iterator[None]:
    """Each per-tensor quantizer's range set to ``[-c, c]`` (its scale ``c / 127.5``), as
    an observer that clipped there would have left it."""
    saved = []
    try:
        for fq, c in ranges.items():
            obs = fq.activation_post_process
            saved.append((obs, obs.min_val, obs.max_val))
            limit = torch.tensor(float(c), dtype=obs.min_val.dtype, device=obs.min_val.device)
            obs.min_val, obs.max_val = -limit, limit.clone()
        yield
    finally:
        for obs, low, high in reversed(saved):
            obs.min_val, obs.max_val = low, high
