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
