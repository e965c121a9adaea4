"""Observers: running statistics of a tensor's range and the symmetric int8 scale from them.

Numerics: int8 symmetric, zero point 0, range [-128, 127],
``scale = max(|min|, |max|) / 127.5`` clamped to at least the float32 eps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hatcli.quant.int8 import HALF_RANGE

_EPS = torch.finfo(torch.float32).eps
_QUANTILE_SAMPLE = 1 << 20
"""At most this many values of a batch are searched for a percentile or an MSE range."""


def symmetric_scale(min_val: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale for a range; 1.0 where nothing was observed yet."""
    max_abs = torch.maximum(-min_val, max_val)
    scale = (max_abs / HALF_RANGE).clamp(min=_EPS)
    # An observer that has seen nothing has min=+inf, max=-inf (torch.ao also answers 1.0).
    return torch.where(min_val > max_val, torch.ones_like(scale), scale)


class _Observer(nn.Module):
    """Moving-average min/max of what passes through; ``forward`` returns its input unchanged."""

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(self, averaging_constant: float) -> None:
        super().__init__()
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @property
    def initialized(self) -> bool:
        """Whether a batch has been observed."""
        return not bool(torch.isinf(self.min_val).all())

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        self.observe_min_max(*self._batch_min_max(x.detach().float()))
        return x

    @torch.no_grad()
    def observe_min_max(self, cur_min: torch.Tensor, cur_max: torch.Tensor) -> None:
        """Update the running range with one batch's min and max."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank observes the global batch's range, so all quantize alike (and
            # as one process with the whole batch would).
            dist.all_reduce(cur_min, op=dist.ReduceOp.MIN)
            dist.all_reduce(cur_max, op=dist.ReduceOp.MAX)
        if self.min_val.shape != cur_min.shape or not self.initialized:
            # The first batch initialises the running range.
            self.min_val = cur_min.clone()
            self.max_val = cur_max.clone()
        else:
            c = self.averaging_constant
            self.min_val.add_(c * (cur_min - self.min_val))
            self.max_val.add_(c * (cur_max - self.max_val))

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``: float32 scale, int32 zero point (always 0)."""
        scale = symmetric_scale(self.min_val, self.max_val)
        return scale, torch.zeros_like(scale, dtype=torch.int32)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Per-channel buffers get their shape from the first batch; adopt the saved one.
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"averaging_constant={self.averaging_constant}"


class MovingAverageMinMaxObserver(_Observer):
    """Per-tensor range, averaged over batches with constant 0.01 (the first batch initialises)."""

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__(averaging_constant)

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.aminmax(x)


class PerChannelMinMaxObserver(_Observer):
    """Per-channel range along ``ch_axis`` (weights: output channels).

    ``averaging_constant=1.0`` (the default) tracks the current tensor's range exactly.
    """

    def __init__(self, ch_axis: int = 0, averaging_constant: float = 1.0) -> None:
        super().__init__(averaging_constant)
        self.ch_axis = ch_axis

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1)
        return torch.aminmax(flat, dim=1)

    def extra_repr(self) -> str:
        return f"ch_axis={self.ch_axis}, {super().extra_repr()}"


class PercentileObserver(MovingAverageMinMaxObserver):
    """Per-tensor range clipped at a percentile of ``|x|``: the batch's range is
    ``[-c, c]`` with ``c`` the ``percentile``-th percentile of ``|x|`` (then averaged as
    the min-max observer does). Outliers beyond it saturate rather than widen the scale
    for everything else."""

    def __init__(self, percentile: float = 99.99, averaging_constant: float = 0.01) -> None:
        super().__init__(averaging_constant)
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.abs().flatten()
        if flat.numel() > _QUANTILE_SAMPLE:
            # torch.quantile refuses tensors over 2**24 elements; a strided sample keeps
            # the estimate deterministic.
            flat = flat[:: flat.numel() // _QUANTILE_SAMPLE + 1]
        c = torch.quantile(flat, self.percentile / 100.0)
        return -c, c

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, {super().extra_repr()}"


class MSEObserver(MovingAverageMinMaxObserver):
    """Per-tensor range that minimises the mean squared int8 quantization error of the
    batch: ``candidates`` clipping points between ``max|x| / candidates`` and ``max|x|``
    are tried, and the best is averaged as the min-max observer does."""

    def __init__(self, candidates: int = 64, averaging_constant: float = 0.01) -> None:
        super().__init__(averaging_constant)
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        self.candidates = candidates

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten()
        if flat.numel() > _QUANTILE_SAMPLE:
            flat = flat[:: flat.numel() // _QUANTILE_SAMPLE + 1]
        top = flat.abs().max()
        if float(top) == 0.0:
            return -top, top
        clips = top * torch.arange(1, self.candidates + 1, dtype=flat.dtype) / self.candidates
        scales = (clips / HALF_RANGE).clamp(min=_EPS)
        errors = []
        for scale in scales:
            q = torch.round(flat / scale).clamp(-128, 127) * scale
            errors.append(torch.mean((q - flat) ** 2))
        c = clips[int(torch.argmin(torch.stack(errors)))]
        return -c, c

    def extra_repr(self) -> str:
        return f"candidates={self.candidates}, {super().extra_repr()}"


class FixedScaleObserver(MovingAverageMinMaxObserver):
    """A scale given in advance (e.g. a camera input of known range): observes nothing."""

    def __init__(self, scale: float) -> None:
        super().__init__(1.0)
        if not scale > 0.0:
            raise ValueError(f"a fixed scale must be positive, got {scale}")
        self.fixed_scale = scale
        limit = torch.tensor(scale * HALF_RANGE)
        self.min_val, self.max_val = -limit, limit.clone()

    def observe_min_max(self, cur_min: torch.Tensor, cur_max: torch.Tensor) -> None:
        return None

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.tensor(self.fixed_scale, dtype=torch.float32)
        return scale, torch.zeros((), dtype=torch.int32)

    def extra_repr(self) -> str:
        return f"scale={self.fixed_scale}"
