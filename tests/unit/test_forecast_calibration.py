"""Residual ensembles (the probabilistic baselines) and the post-hoc spread calibration."""

from __future__ import annotations

import numpy as np
import pytest

from tsdiff.models.baselines import SeasonalNaive
from tsdiff.models.forecast_calibration import (
    ResidualEnsemble, apply_spread, bootstrap_ensemble, gaussian_ensemble, residual_std, spread_factors,
)


def test_gaussian_and_bootstrap_ensembles_are_seeded_and_centred():
    point = np.zeros((500, 3, 2))
    std = np.array([[1.0, 2.0]] * 3)
    a = gaussian_ensemble(point, std, 8, seed=1)
    assert a.shape == (8, 500, 3, 2) and np.array_equal(a, gaussian_ensemble(point, std, 8, seed=1))
    np.testing.assert_allclose(a.std(axis=(0, 1)), std, rtol=0.05)
    res = np.array([[[1.0, -1.0]] * 3, [[2.0, 0.0]] * 3])
    b = bootstrap_ensemble(point, res, 4, seed=0)
    assert set(np.unique(b[..., 0])) <= {1.0, 2.0} and np.array_equal(b, bootstrap_ensemble(point, res, 4, seed=0))
    np.testing.assert_allclose(residual_std(point[:2], res), np.sqrt(np.array([[2.5, 0.5]] * 3)))
    with pytest.raises(ValueError, match=r"\(M >= 1, H, C\)"):
        bootstrap_ensemble(point, res[:, :2], 4)


def test_antithetic_gaussian_ensemble_pairs_cancel_around_the_point():
    point, std = np.ones((200, 3, 2)), np.full((3, 2), 0.5)
    a = gaussian_ensemble(point, std, 6, seed=3, antithetic=True)
    np.testing.assert_allclose(a[:3] + a[3:], 2 * point[None].repeat(3, 0), atol=1e-5)
    np.testing.assert_allclose(a.std(axis=(0, 1)), std, rtol=0.1)
    with pytest.raises(ValueError, match="even"):
        gaussian_ensemble(point, std, 5, antithetic=True)


def test_spread_calibration_widens_a_too_narrow_ensemble_to_the_error_of_its_mean():
    g = np.random.default_rng(0)
    truth_spread = 2.0
    center = g.standard_normal((3000, 2, 1))
    target = center + truth_spread * g.standard_normal(center.shape)
    narrow = center[None] + 0.1 * g.standard_normal((10, *center.shape))  # right centre, 20x too narrow
    f = spread_factors(narrow, target)
    assert f.shape == (2, 1) and np.allclose(f, truth_spread / 0.1 / np.sqrt(1.1), rtol=0.1)
    wide = apply_spread(narrow, f)
    np.testing.assert_allclose(wide.mean(0), narrow.mean(0), atol=1e-5)  # the point forecast is kept
    assert wide.std(0, ddof=1).mean() == pytest.approx(truth_spread / np.sqrt(1.1), rel=0.1)
    # an antithetic ensemble's mean has no 1/S noise: the factor drops the 1 + 1/S
    np.testing.assert_allclose(spread_factors(narrow, target, antithetic=True), f * np.sqrt(1.1))
    with pytest.raises(ValueError, match="S >= 2"):
        spread_factors(narrow[:1], target)


class _DM:
    lookback, horizon = 4, 2

    def __init__(self):
        t = np.arange(60, dtype=np.float32)
        self.series = np.stack([np.sin(t), np.cos(t)], axis=-1)

    def arrays(self, split, stride=None, max_windows=None):
        starts = np.arange(0, 30, stride or 1)
        idx = starts[:, None] + np.arange(6)[None]
        w = self.series[idx]
        return w[:, :4], w[:, 4:]


def test_residual_ensemble_wraps_a_point_forecaster():
    ens = ResidualEnsemble(SeasonalNaive(1), noise="bootstrap").fit(_DM())
    lookback, future = _DM().arrays("test")
    np.testing.assert_array_equal(ens.predict(lookback), SeasonalNaive(1).fit(_DM()).predict(lookback))
    samples = ens.sample(lookback, 5, seed=0)
    assert samples.shape == (5, *future.shape) and ens.name == "naive+boot"
    with pytest.raises(ValueError, match="noise"):
        ResidualEnsemble(SeasonalNaive(1), noise="laplace")
    with pytest.raises(RuntimeError, match="fit"):
        ResidualEnsemble(SeasonalNaive(1)).sample(lookback, 2)
