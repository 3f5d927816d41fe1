"""The generation-metric suite: one entry point, paper and fast settings, repetitions over seeds.

``evaluate_generation(real, fake, metrics="all", mode="paper", num_runs=None, seed=0)`` returns, for every
score, ``{"mean", "std", "ci95", "runs", "seconds", "settings", "repeated"}``:

* metrics that train a network or draw random numbers (Context-FID, discriminative, predictive, sliced
  Wasserstein, correlational on random subsets) are run ``num_runs`` times with seeds
  ``seed, seed + 1, ...``; ``ci95`` is the half-width of the 95 % Student-t interval of the mean, the
  "mean ± interval" Diffusion-TS reports over 5 runs (``display_scores`` there);
* closed-form metrics (KL in both forms, marginal Wasserstein, spectral distance, segment DTW) give the same number for
  every seed, so they are computed once: ``runs`` holds one value and ``std = ci95 = 0``.

Input convention: ``(N, length, channels)`` for both sets. With ``scale="minmax"`` (default) both sets are
min-max scaled with the real set's per-channel range first, the Diffusion-TS convention (the predictive
score's sigmoid output assumes [0, 1] data); ``scale="none"`` uses the arrays as given.

The metric table :data:`GENERATION_METRICS` maps a name to a :class:`MetricSpec`; choosing metrics is a
list of its keys, no registry object is involved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats

from ._checks import check_int, check_pair, minmax_scale_like_diffusion_ts, torch_threads
from .dtw import segment_dtw
from .fid import context_fid_runs
from .posthoc import discriminative_scores, predictive_scores
from .statistics import correlational_score, kl_divergence, kl_divergence_pooled, spectral_density_distance
from .wasserstein import marginal_wasserstein, sliced_wasserstein

RunFn = Callable[..., dict[str, list[float]]]


@dataclass(frozen=True)
class MetricSpec:
    """How to compute one metric: ``fn(real, fake, seeds, device, **settings) -> {score: [value per seed]}``."""

    fn: RunFn
    repeated: bool
    paper: dict[str, Any] = field(default_factory=dict)
    fast: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _context_fid(real, fake, seeds, device, iterations=None, batch_size=8):
    return {"context_fid": context_fid_runs(real, fake, seeds, iterations, batch_size, device)}


def _discriminative(real, fake, seeds, device, iterations=2000, batch_size=128, hidden=None):
    res = discriminative_scores(real, fake, seeds, iterations, batch_size, hidden, device=device)
    return {
        "discriminative": [r["score"] for r in res],
        "discriminative_accuracy_real": [r["accuracy_real"] for r in res],
        "discriminative_accuracy_fake": [r["accuracy_fake"] for r in res],
    }


def _predictive(real, fake, seeds, device, iterations=5000, batch_size=128, hidden=None):
    return {"predictive": predictive_scores(real, fake, seeds, iterations, batch_size, hidden, device=device)}


def _correlational(real, fake, seeds, device, subset_fraction=None):
    # Diffusion-TS: each repetition scores a random subset of N / num_runs windows of each set.
    frac = (1.0 / len(seeds)) if subset_fraction is None else float(subset_fraction)
    size = max(2, int(min(len(real), len(fake)) * frac))
    sub = None if frac >= 1.0 else size
    return {"correlational": [correlational_score(real, fake, sub, s) for s in seeds]}


def _kl(real, fake, seeds, device, bins=50):
    return {"kl": [kl_divergence(real, fake, bins=bins)]}


def _kl_kprotodiff(real, fake, seeds, device, bins=100):
    return {"kl_kprotodiff": [kl_divergence_pooled(real, fake, bins=bins)]}


def _sliced(real, fake, seeds, device, num_directions=1000):
    return {"sliced_wasserstein": [sliced_wasserstein(real, fake, num_directions, s) for s in seeds]}


def _marginal(real, fake, seeds, device):
    return {"marginal_wasserstein": [marginal_wasserstein(real, fake)]}


def _spectral(real, fake, seeds, device):
    return {"spectral": [spectral_density_distance(real, fake)]}


def _dtw(variant):
    def run(real, fake, seeds, device, segment_lengths=(6, 8, 10), max_windows=None):
        if variant == "paired" and len(real) != len(fake):
            n = min(len(real), len(fake))  # index pairing needs equal sizes: use the first n of each
            real, fake = real[:n], fake[:n]
        out = {}
        for s in segment_lengths:
            if s > real.shape[1]:
                continue
            out[f"segment_dtw_{variant}@{s}"] = [
                segment_dtw(real, fake, s, variant, max_windows=max_windows, seed=seeds[0], device=device)
            ]
        if not out:
            raise ValueError(
                f"all segment lengths {list(segment_lengths)} exceed the window length {real.shape[1]}; "
                "set segment_lengths to values <= the window length."
            )
        return out

    return run


GENERATION_METRICS: dict[str, MetricSpec] = {
    "context_fid": MetricSpec(_context_fid, True, {"iterations": None, "batch_size": 8}, {"iterations": 100},
                              "Jeha et al. 2022 (PSA-GAN); TS2Vec: Yue et al. 2022"),
    "correlational": MetricSpec(_correlational, True, {}, {}, "Liao et al. 2020; Diffusion-TS protocol"),
    "discriminative": MetricSpec(_discriminative, True, {"iterations": 2000, "batch_size": 128},
                                 {"iterations": 300}, "Yoon et al. 2019 (TimeGAN)"),
    "predictive": MetricSpec(_predictive, True, {"iterations": 5000, "batch_size": 128}, {"iterations": 500},
                             "Yoon et al. 2019 (TimeGAN)"),
    "kl": MetricSpec(_kl, False, {"bins": 50}, {}, "per-channel marginal KL (tsdiff)"),
    "kl_kprotodiff": MetricSpec(_kl_kprotodiff, False, {"bins": 100}, {},
                                "K-ProtoDiff (AAAI 2026) script: channels pooled, 100 bins over the real range"),
    "segment_dtw_paired": MetricSpec(_dtw("paired"), False, {"segment_lengths": (6, 8, 10)}, {},
                                     "K-ProtoDiff (AAAI 2026), index-paired"),
    "segment_dtw_nn": MetricSpec(_dtw("nn"), False, {"segment_lengths": (6, 8, 10), "max_windows": None},
                                 {"max_windows": 250}, "nearest-neighbour variant (tsdiff)"),
    "sliced_wasserstein": MetricSpec(_sliced, True, {"num_directions": 1000}, {"num_directions": 200},
                                     "Crabbé et al. 2024 (fdiff)"),
    "marginal_wasserstein": MetricSpec(_marginal, False, {}, {}, "Crabbé et al. 2024 (fdiff)"),
    "spectral": MetricSpec(_spectral, False, {}, {}, "tsdiff (mean power spectra)"),
}

DEFAULT_NUM_RUNS = {"paper": 5, "fast": 3}


def summarize_runs(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95 % Student-t half-width of a list of run values.

    A metric that does not apply (every run NaN, e.g. the correlational score of one channel) gives
    ``None`` for every statistic and ``applicable: False``; tables print it as "n/a".
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size and np.all(np.isnan(v)):
        return {"mean": None, "std": None, "ci95": None, "runs": [None] * int(v.size), "applicable": False}
    n = v.size
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    ci = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "ci95": ci, "runs": [float(x) for x in v]}


def resolve_metrics(metrics: list[str] | tuple[str, ...] | str) -> list[str]:
    """Validate metric names; ``"all"`` (or a comma-separated string) is accepted."""
    if isinstance(metrics, str):
        names = list(GENERATION_METRICS) if metrics.strip() == "all" else [m.strip() for m in metrics.split(",") if m.strip()]
    else:
        names = [str(m) for m in metrics]
    if not names:
        raise ValueError(f"no metric selected; choose from {sorted(GENERATION_METRICS)} or 'all'.")
    unknown = [m for m in names if m not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(GENERATION_METRICS)} or 'all'.")
    return list(dict.fromkeys(names))


def evaluate_generation(
    real,
    fake,
    metrics: list[str] | str = "all",
    mode: str = "paper",
    num_runs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    scale: str = "minmax",
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    num_threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Score a generated set against a real set with the selected metrics.

    ``mode="paper"`` uses the published settings (TS2Vec 200/600 iterations, GRUs 2000/5000 iterations,
    1000 slicing directions, all windows for DTW, 5 runs); ``mode="fast"`` cuts the training iterations
    (Context-FID 100, discriminative 300, predictive 500), uses 200 directions, caps the nearest-neighbour
    DTW at 250 windows and defaults to 3 runs. ``overrides={"predictive": {"iterations": 1000}}`` changes
    individual settings. ``progress(name, result)`` is called after each metric (for logging).
    ``num_threads`` (default ``None``: untouched) sets torch's intra-op threads for the duration of the
    call only; ``1`` is much faster for these tiny networks on a CPU shared with other busy processes.
    """
    if mode not in DEFAULT_NUM_RUNS:
        raise ValueError(f"mode must be 'paper' or 'fast'; got {mode!r}")
    if scale not in ("minmax", "none"):
        raise ValueError(f"scale must be 'minmax' (Diffusion-TS convention) or 'none'; got {scale!r}")
    names = resolve_metrics(metrics)
    num_runs = DEFAULT_NUM_RUNS[mode] if num_runs is None else check_int(num_runs, "num_runs")
    seed = int(seed)
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in GENERATION_METRICS]
    if bad:
        raise ValueError(f"overrides name unknown metric(s) {bad}; choose from {sorted(GENERATION_METRICS)}.")
    real, fake = check_pair(real, fake, min_size=2)
    if scale == "minmax":
        real, fake = minmax_scale_like_diffusion_ts(real, fake)
    seeds = [seed + k for k in range(num_runs)]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = GENERATION_METRICS[name]
        settings = {**spec.paper, **(spec.fast if mode == "fast" else {}), **overrides.get(name, {})}
        start = time.perf_counter()
        with torch_threads(num_threads):
            values = spec.fn(real, fake, seeds if spec.repeated else seeds[:1], device, **settings)
        seconds = time.perf_counter() - start
        for key, runs in values.items():
            entry = summarize_runs(runs)
            entry.update(
                metric=name,
                repeated=spec.repeated,
                seconds=seconds,
                settings={k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
                source=spec.source,
            )
            results[key] = entry
        if progress is not None:
            progress(name, {k: results[k] for k in values})
    return results
