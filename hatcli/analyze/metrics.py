"""How far a quantized tensor is from its float reference: cosine similarity, SQNR, the
largest error in output scales, the fraction clipped at the int8 range's ends, and how
unevenly a tensor's channels use the range.

Every number is over all elements of all batches seen (sums in float64, not a mean of
per-batch values), so it does not depend on how the data was batched.

- cosine ``= sum(r * q) / sqrt(sum(r^2) * sum(q^2))``; 1.0 when both are all zeros.
- SQNR ``= 10 * log10(sum(r^2) / sum((r - q)^2))`` dB (torch.ao's Numeric Suite and the
  PT2E debugger use the same ratio); ``inf`` when ``q`` equals ``r``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hatcli.quant.int8 import QUANT_MAX, QUANT_MIN


def channel_view(scale: torch.Tensor, dim: int, axis: int) -> torch.Tensor:
    """A 1-d per-channel ``scale`` shaped to broadcast along ``axis`` of a ``dim``-d tensor."""
    shape = [1] * dim
    shape[axis] = -1
    return scale.reshape(shape)


def cosine(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Cosine similarity of two tensors taken as flat vectors."""
    stats = ErrorStats()
    stats.update(reference, approx)
    return stats.cosine


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``reference``, in dB."""
    stats = ErrorStats()
    stats.update(reference, approx)
    return stats.sqnr_db


def ratio_db(signal: float, noise: float) -> float:
    """``10 * log10(signal / noise)``: ``inf`` without noise, ``-inf`` without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def error_in_scales(
    reference: torch.Tensor,
    approx: torch.Tensor,
    scale: torch.Tensor,
    axis: int | None = None,
) -> torch.Tensor:
    """``|reference - approx|`` in units of the output scale (per channel along ``axis``)."""
    error = (reference.double() - approx.double()).abs()
    s = scale.double()
    if axis is not None:
        s = channel_view(s, error.dim(), axis)
    return error / s


def clipped_count(x: torch.Tensor, scale: torch.Tensor) -> int:
    """How many values of ``x`` fall outside the int8 grid of ``scale`` (``round(x / s)``
    below -128 or above 127), i.e. are clipped at the range's ends."""
    q = torch.round(x.double() / scale.double())
    return int(((q < QUANT_MIN) | (q > QUANT_MAX)).sum())


def spread(per_channel_max: torch.Tensor) -> float:
    """max / median of per-channel maxima of ``|x|``: 1 when every channel uses the same
    range; ``inf`` when the median channel is all zeros and another is not."""
    values = per_channel_max.double().flatten()
    if values.numel() == 0:
        return math.nan
    top = float(values.max())
    median = float(torch.quantile(values, 0.5))
    if median == 0.0:
        return math.inf if top > 0.0 else 1.0
    return top / median


def channel_abs_max(x: torch.Tensor) -> torch.Tensor:
    """max ``|x|`` of each channel (dim 1; one channel for tensors of fewer dims)."""
    if x.dim() < 2:
        return x.detach().abs().max().reshape(1) if x.numel() else torch.zeros(1)
    flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1)
    if flat.shape[1] == 0:
        return torch.zeros(x.shape[1])
    return flat.abs().amax(dim=1).float()


def zeroed_fraction(weight: torch.Tensor, scale: torch.Tensor, axis: int | None) -> float:
    """The fraction of non-zero weights that round to 0 on their int8 grid."""
    w = weight.detach().double()
    s = scale.detach().double()
    if axis is not None:
        s = channel_view(s, w.dim(), axis)
    nonzero = w != 0
    count = int(nonzero.sum())
    if count == 0:
        return 0.0
    return int(((torch.round(w / s) == 0) & nonzero).sum()) / count


@dataclass
class ErrorStats:
    """Running sums comparing a reference with its approximation over many tensors."""

    reference_sq: float = 0.0
    error_sq: float = 0.0
    dot: float = 0.0
    approx_sq: float = 0.0
    max_abs: float = 0.0
    max_scaled: float = math.nan
    count: int = 0
    channel_reference_sq: list[float] = field(default_factory=list)
    channel_error_sq: list[float] = field(default_factory=list)

    def update(
        self,
        reference: torch.Tensor,
        approx: torch.Tensor,
        scale: torch.Tensor | None = None,
        axis: int | None = None,
    ) -> None:
        """Add one pair of tensors of the same shape; ``scale`` (per tensor, or per channel
        along ``axis``) gives the errors in output scales."""
        r = reference.detach().double()
        q = approx.detach().double().reshape(r.shape)
        e = r - q
        self.reference_sq += float((r * r).sum())
        self.error_sq += float((e * e).sum())
        self.dot += float((r * q).sum())
        self.approx_sq += float((q * q).sum())
        self.count += r.numel()
        if r.numel():
            self.max_abs = max(self.max_abs, float(e.abs().max()))
        if scale is not None and r.numel():
            scaled = float(error_in_scales(r, q, scale, axis).max())
            self.max_scaled = (
                scaled if math.isnan(self.max_scaled) else max(self.max_scaled, scaled)
            )
        self._update_channels(r, e)

    def _update_channels(self, r: torch.Tensor, e: torch.Tensor) -> None:
        if r.dim() < 2 or r.numel() == 0:
            return
        dims = [d for d in range(r.dim()) if d != 1]
        signal = (r * r).sum(dim=dims).tolist()
        noise = (e * e).sum(dim=dims).tolist()
        if not self.channel_reference_sq:
            self.channel_reference_sq = [0.0] * len(signal)
            self.channel_error_sq = [0.0] * len(noise)
        if len(signal) != len(self.channel_reference_sq):
            return  # a call of another shape: the per-channel view keeps the first one's
        for i, (s, n) in enumerate(zip(signal, noise, strict=True)):
            self.channel_reference_sq[i] += s
            self.channel_error_sq[i] += n

    @property
    def cosine(self) -> float:
        if self.reference_sq == 0.0 and self.approx_sq == 0.0:
            return 1.0
        if self.reference_sq == 0.0 or self.approx_sq == 0.0:
            return 0.0
        return self.dot / math.sqrt(self.reference_sq * self.approx_sq)

    @property
    def sqnr_db(self) -> float:
        if self.count == 0:
            return math.nan
        return ratio_db(self.reference_sq, self.error_sq)

    @property
    def worst_channel_sqnr_db(self) -> float:
        """The lowest SQNR of one channel (dim 1): a channel the per-tensor figure hides
        when another channel's energy dominates it."""
        found = [
            ratio_db(s, n)
            for s, n in zip(self.channel_reference_sq, self.channel_error_sq, strict=True)
        ]
        return min(found) if found else math.nan
