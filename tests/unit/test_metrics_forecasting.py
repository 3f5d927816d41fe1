"""Forecasting metrics: MSE, MAE (normalised and original units) and the ensemble CRPS."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tsdiff.metrics import crps_ensemble, mae, mse


def test_mse_mae_values_per_horizon_and_ensemble_mean():
    target = np.zeros((2, 3, 1))
    pred = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1).repeat(2, 0)
    assert mse(pred, target) == pytest.approx((1 + 4 + 9) / 3)
    assert mae(pred, target) == pytest.approx(2.0)
    np.testing.assert_allclose(mse(pred, target, per_horizon=True), [1, 4, 9])
    ensemble = np.stack([pred - 1, pred + 1])  # mean over samples equals pred (TimeDiff averages samples)
    assert mse(ensemble, target) == pytest.approx(mse(pred, target))


def test_original_units_use_scaler_statistics():
    target = np.zeros((2, 3, 2))
    pred = np.ones((2, 3, 2))
    std = np.array([2.0, 10.0])
    assert mae(pred, target, mean=np.array([5.0, -1.0]), std=std) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="both mean and std"):
        mse(pred, target, mean=np.zeros(2))


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="does not match target"):
        mse(np.zeros((2, 4, 1)), np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="samples must be"):
        crps_ensemble(np.zeros((2, 4, 1)), np.zeros((2, 4, 1)))


def test_crps_matches_gaussian_closed_form():
    g = np.random.default_rng(0)
    mu, sigma = 0.3, 1.5
    y = np.array([-1.0, 0.0, 0.5, 3.0]).reshape(4, 1, 1)
    samples = mu + sigma * g.standard_normal((4000, 4, 1, 1))
    z = (y - mu) / sigma
    closed = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    for fair in (False, True):
        assert crps_ensemble(samples, y, fair=fair) == pytest.approx(closed.mean(), rel=0.03)


def test_crps_brute_force_point_mass_and_per_horizon():
    g = np.random.default_rng(1)
    samples, target = g.normal(size=(5, 2, 3, 2)), g.normal(size=(2, 3, 2))
    brute = np.abs(samples - target).mean(0) - 0.5 * np.abs(samples[:, None] - samples[None]).mean((0, 1))
    assert crps_ensemble(samples, target) == pytest.approx(brute.mean(), rel=1e-12)
    np.testing.assert_allclose(crps_ensemble(samples, target, per_horizon=True), brute.mean((0, 2)), rtol=1e-12)
    point = np.repeat(target[None] + 0.5, 3, 0)  # a degenerate ensemble: CRPS equals MAE
    assert crps_ensemble(point, target) == pytest.approx(0.5)


def test_calibrated_ensemble_covers_its_levels_and_has_a_flat_pit():
    from tsdiff.metrics.forecasting import ensemble_interval, interval_scores, pit_histogram, pit_values

    g = np.random.default_rng(3)
    samples, target = g.standard_normal((9, 4000, 2, 1)), g.standard_normal((4000, 2, 1))
    cov = interval_scores(samples, target, levels=(0.5, 0.8))
    # Weibull positions: a calibrated 9-member ensemble covers ~80% with its 80% interval (linear: ~70%)
    assert cov["pi80_coverage"] == pytest.approx(0.8, abs=0.02) and cov["pi50_coverage"] == pytest.approx(0.5, abs=0.03)
    freq, flat = pit_histogram(pit_values(samples, target, seed=0), bins=5)
    assert freq.sum() == pytest.approx(1.0) and flat < 0.03
    collapsed = np.repeat(samples[:1] * 0.01, 9, axis=0)  # (almost) no spread: PIT piles up at 0 and 1
    _, flat_bad = pit_histogram(pit_values(collapsed, target, seed=0), bins=5)
    assert flat_bad > 0.5 and interval_scores(collapsed, target)["pi95_coverage"] < 0.05
    lo, hi = ensemble_interval(np.arange(9.0).reshape(9, 1, 1, 1), 0.8)  # positions 1 and 9 of 10: the range
    assert (lo.item(), hi.item()) == (0.0, 8.0)
    with pytest.raises(ValueError, match="level"):
        ensemble_interval(samples, 1.5)
    with pytest.raises(ValueError, match="PIT"):
        pit_histogram(np.array([1.5]))
