"""The calibration observers a spec can choose: percentile, MSE and a fixed scale."""

from __future__ import annotations

import pytest
import torch

from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.int8 import HALF_RANGE
from hatcli.quant.observer import (
    FixedScaleObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)


def _with_outliers() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen)
    x[:10] = 60.0  # a few far outliers widen a min-max range 15-fold
    return x


def _error(x: torch.Tensor, scale: torch.Tensor) -> float:
    q = torch.round(x / scale).clamp(-128, 127) * scale
    return float(torch.mean((q - x) ** 2))


def test_percentile_clips_at_the_percentile_of_the_magnitudes() -> None:
    x = _with_outliers()
    observer = PercentileObserver(percentile=99.0)
    observer(x)
    expected = torch.quantile(x.abs(), 0.99) / HALF_RANGE
    assert torch.allclose(observer.calculate_qparams()[0], expected)


def test_mse_chooses_a_range_with_less_error_than_min_max() -> None:
    # A heavy tail (Laplace): clipping its few largest values costs less than the
    # coarser grid a min-max range gives everything else.
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(100_000, generator=gen) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    mse, minmax = MSEObserver(), MovingAverageMinMaxObserver()
    mse(x)
    minmax(x)
    mse_scale, minmax_scale = mse.calculate_qparams()[0], minmax.calculate_qparams()[0]
    assert mse_scale < minmax_scale
    assert _error(x, mse_scale) < 0.9 * _error(x, minmax_scale)


def test_a_fixed_scale_observes_nothing_and_saves_with_the_model() -> None:
    fq = FakeQuantize(observer=lambda: FixedScaleObserver(0.0078125))
    fq.train()
    y = fq(torch.linspace(-5, 5, 101))
    assert float(fq.scale) == 0.0078125
    assert float(y.max()) == pytest.approx(127 * 0.0078125)  # saturates: the range is fixed
    restored = FakeQuantize(observer=lambda: FixedScaleObserver(0.0078125))
    restored.load_state_dict(fq.state_dict())
    assert float(restored.scale) == 0.0078125


@pytest.mark.parametrize("make", [lambda: PercentileObserver(0), lambda: MSEObserver(0)])
def test_impossible_settings_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()
