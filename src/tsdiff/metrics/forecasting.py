"""Forecasting metrics: MSE, MAE and CRPS of a sample ensemble, with a per-horizon breakdown.

Shapes: targets are ``(N, H, C)`` (windows, horizon steps, channels). A point forecast has the target's
shape; a sample ensemble is ``(S, N, H, C)`` with the ``S`` samples on the first axis.

TimeDiff (Shen & Kwok, ICML 2023, Sec. 4.1) reports MSE in the *normalised* space the models are trained
in (each variable z-scored), and evaluates a diffusion forecaster by averaging 10 sampled predictions;
passing an ensemble to :func:`mse` / :func:`mae` does exactly that (mean over the sample axis first).
Pass ``mean`` and ``std`` (the scaler's per-channel statistics) to score in original units instead:
both prediction and target are mapped back with ``x * std + mean`` first.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN/inf values; drop those windows before scoring.")
    return arr


def _prepare(pred, target, mean=None, std=None) -> tuple[np.ndarray, np.ndarray]:
    p = _as_array(pred, "pred")
    t = _as_array(target, "target")
    if t.ndim != 3:
        raise ValueError(f"target must be (N, horizon, channels); got shape {t.shape}. Add axes with x[..., None] for one channel.")
    if p.ndim == t.ndim + 1:
        p = p.mean(axis=0)  # an ensemble (S, N, H, C): score its mean, as TimeDiff does
    if p.shape != t.shape:
        raise ValueError(
            f"pred {tuple(p.shape)} does not match target {tuple(t.shape)}; pass a point forecast shaped like the "
            "target or an ensemble (samples, N, horizon, channels)."
        )
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the scaler's per-channel statistics) to score in original units, or neither.")
    if mean is not None:
        m = _as_array(mean, "mean")
        s = _as_array(std, "std")
        p, t = p * s + m, t * s + m
    return p, t


def _reduce(err: np.ndarray, per_horizon: bool):
    if per_horizon:
        return err.mean(axis=tuple(i for i in range(err.ndim) if i != err.ndim - 2))
    return float(err.mean())


def mse(pred, target, *, mean=None, std=None, per_horizon: bool = False):
    """Mean squared error (TimeDiff's headline metric); ``per_horizon`` gives one value per step ``(H,)``."""
    p, t = _prepare(pred, target, mean, std)
    return _reduce((p - t) ** 2, per_horizon)


def mae(pred, target, *, mean=None, std=None, per_horizon: bool = False):
    """Mean absolute error; ``per_horizon`` gives one value per step ``(H,)``."""
    p, t = _prepare(pred, target, mean, std)
    return _reduce(np.abs(p - t), per_horizon)


def crps_ensemble(samples, target, per_horizon: bool = False, fair: bool = False, *, mean=None, std=None):
    """Continuous ranked probability score of a sample ensemble ``(S, N, H, C)`` against ``target`` ``(N, H, C)``.

    CRPS (Matheson & Winkler, 1976; Gneiting & Raftery, 2007) is the proper scoring rule used by the
    probabilistic forecasting diffusion papers (TimeGrad, CSDI) because it rewards calibrated *and* sharp
    ensembles, which MSE of the mean cannot see. The standard empirical estimator is
    ``CRPS = mean_s |X_s - y| - 1/(2 S^2) sum_{s,s'} |X_s - X_s'|``, computed in ``O(S log S)`` with
    sorted samples: ``sum_{s,s'} |X_s - X_s'| = 2 sum_k (2k - S - 1) X_(k)``. ``fair=True`` uses
    ``1/(2 S (S-1))`` instead (unbiased for the CRPS of the distribution the samples come from).
    Returns the mean over windows, steps and channels, or ``(H,)`` with ``per_horizon``.
    """
    x = _as_array(samples, "samples")
    y = _as_array(target, "target")
    if x.ndim != 4 or y.ndim != 3 or x.shape[1:] != y.shape:
        raise ValueError(
            f"samples must be (S, N, H, C) and target (N, H, C) with matching N, H, C; got {x.shape} and {y.shape}."
        )
    s = x.shape[0]
    if fair and s < 2:
        raise ValueError("the fair CRPS needs at least 2 samples per forecast.")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std to score in original units, or neither.")
    if mean is not None:
        m, sd = _as_array(mean, "mean"), _as_array(std, "std")
        x, y = x * sd + m, y * sd + m
    skill = np.abs(x - y[None]).mean(axis=0)
    xs = np.sort(x, axis=0)
    k = np.arange(1, s + 1, dtype=np.float64).reshape(-1, 1, 1, 1)
    pair_sum = 2.0 * np.sum((2.0 * k - s - 1.0) * xs, axis=0)
    spread = pair_sum / (2.0 * s * (s - 1)) if fair else pair_sum / (2.0 * s * s)
    return _reduce(skill - spread, per_horizon)


# ---------------------------------------------------------------------- calibration of a sample ensemble
def _ensemble_and_target(samples, target) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(samples, "samples"), _as_array(target, "target")
    if x.ndim != 4 or y.ndim != 3 or x.shape[1:] != y.shape:
        raise ValueError(
            f"samples must be (S, N, H, C) and target (N, H, C) with matching N, H, C; got {x.shape} and {y.shape}."
        )
    return x, y


def ensemble_interval(samples, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of an ensemble ``(S, ...)``: its ``(1 -+ level) / 2`` quantiles.

    Quantiles use the Weibull plotting positions ``k / (S + 1)`` (``np.quantile(method="weibull")``): for
    ``S`` exchangeable samples and a truth drawn from the same law, ``P(y <= x_(k)) = k / (S + 1)``, so a
    calibrated ensemble covers ``level`` on average. The default linear positions ``(k - 1) / (S - 1)``
    would make a calibrated 10-member ensemble cover ~65% with its "80%" interval. Levels beyond
    ``(S - 1) / (S + 1)`` are clipped to the ensemble's range (10 samples cannot show a 95% interval).
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"interval level must lie in (0, 1), got {level}")
    x = _as_array(samples, "samples")
    lo, hi = np.quantile(x, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0, method="weibull")
    return lo, hi


def interval_scores(samples, target, levels=(0.5, 0.8, 0.95)) -> dict[str, float]:
    """Coverage (share of target values inside) and mean width of each central interval level:
    keys ``pi50_coverage``, ``pi50_width``, ... (see :func:`ensemble_interval`)."""
    x, y = _ensemble_and_target(samples, target)
    out: dict[str, float] = {}
    for level in levels:
        lo, hi = ensemble_interval(x, level)
        tag = f"pi{round(100 * level)}"
        out[f"{tag}_coverage"] = float(((y >= lo) & (y <= hi)).mean())
        out[f"{tag}_width"] = float((hi - lo).mean())
    return out


def pit_values(samples, target, seed: int = 0) -> np.ndarray:
    """Randomized probability integral transform of each target value under its ensemble (a rank
    histogram in ``[0, 1]``): ``u = (#{x_s < y} + V (#{x_s = y} + 1)) / (S + 1)``, ``V ~ U(0, 1)`` seeded.
    Uniform exactly when the truth is exchangeable with the samples (Hamill 2001), for any ``S``."""
    x, y = _ensemble_and_target(samples, target)
    below = (x < y[None]).sum(axis=0)
    ties = (x == y[None]).sum(axis=0)
    v = np.random.default_rng(seed).random(y.shape)
    return (below + v * (ties + 1)) / (x.shape[0] + 1)


def pit_histogram(pit, bins: int = 10) -> tuple[np.ndarray, float]:
    """Relative frequencies of the PIT values in ``bins`` equal bins, and the flatness score: the total
    variation distance to the uniform histogram, ``0.5 sum_i |f_i - 1 / bins|`` (0 = calibrated; an
    under-dispersed ensemble piles its PIT at 0 and 1 and scores up to ``1 - 2 / bins``)."""
    u = np.asarray(pit, dtype=np.float64).ravel()
    if u.size == 0 or np.any((u < 0) | (u > 1)):
        raise ValueError("PIT values must be a non-empty array in [0, 1] (see pit_values)")
    freq = np.histogram(u, bins=bins, range=(0.0, 1.0))[0] / u.size
    return freq, float(0.5 * np.abs(freq - 1.0 / bins).sum())


def probabilistic_scores(samples, target, levels=(0.5, 0.8, 0.95), pit_bins: int = 10, seed: int = 0) -> dict:
    """Everything the forecast table reports about an ensemble's distribution: ensemble CRPS, interval
    coverage/width per level, the PIT histogram and its flatness."""
    freq, flat = pit_histogram(pit_values(samples, target, seed), pit_bins)
    return {"crps": float(crps_ensemble(samples, target)), **interval_scores(samples, target, levels),
            "pit_hist": [float(f) for f in freq], "pit_flatness": flat}
