"""``python cmd/sample.py model_id=<run_id|latest>``: sample from a trained run and evaluate the samples.

Samples are compared with the test split using the frequency-diffusion paper's metrics (sliced
Wasserstein distance over 1000 random directions, marginal Wasserstein, spectral-density distance),
each printed next to two baselines so the numbers can be read:

* ``gaussian``: a multivariate Gaussian fitted to the flattened training windows (mean and full
  covariance; diagonal when a window has more than 2048 values) -- what any generator must beat;
* ``train``: real training windows -- roughly the best a generator of the training distribution can do.

Everything lands in a new folder ``<run>/samples/<sample_id>/`` (never overwriting): ``samples.npy``
(standardized space, ``(N, length, channels)``), ``samples_original_units.npy``, ``real.npy`` (the test
windows compared against), ``metrics.json`` and ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tsdiff.runs import atomic_save_npy, atomic_write_json, new_child_dir, resolve_run_dir
from tsdiff.tasks.common import build_logger, format_table, load_run_model, log_metrics, save_config
from tsdiff.utils import resolve_device

_MAX_GAUSSIAN_FULL_DIM = 2048


def gaussian_baseline(train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` windows from a Gaussian fitted to the flattened training windows ``(N, L, C)``."""
    flat = train.reshape(len(train), -1).astype(np.float64)
    rng = np.random.default_rng(seed)
    mean = flat.mean(0)
    if flat.shape[1] <= _MAX_GAUSSIAN_FULL_DIM and len(flat) > 1:
        cov = np.cov(flat, rowvar=False) + 1e-6 * np.eye(flat.shape[1])
        out = rng.multivariate_normal(mean, cov, size=n, method="cholesky")
    else:
        out = mean + flat.std(0) * rng.standard_normal((n, flat.shape[1]))
    return out.reshape(n, *train.shape[1:]).astype(np.float32)


def evaluate_against(real: np.ndarray, candidates: dict[str, np.ndarray], num_directions: int, seed: int) -> dict[str, dict[str, float]]:
    """The reference's metrics of every candidate set against ``real``."""
    from tsdiff.metrics.statistics import spectral_density_distance
    from tsdiff.metrics.wasserstein import marginal_wasserstein, sliced_wasserstein

    out = {}
    for name, fake in candidates.items():
        out[name] = {
            "sliced_wasserstein": float(sliced_wasserstein(real, fake, num_directions=num_directions, seed=seed)),
            "marginal_wasserstein": float(marginal_wasserstein(real, fake)),
            "spectral_density_distance": float(spectral_density_distance(real, fake)),
        }
    return out


def _check_matches_run(cfg: DictConfig, train_cfg: DictConfig, run_id: str) -> None:
    ft = cfg.get("fourier_transform")
    if ft is not None and train_cfg.get("fourier_transform") is not None and bool(ft) != bool(train_cfg.fourier_transform):
        raise ValueError(
            f"fourier_transform={ft} does not match run '{run_id}', which was trained with "
            f"fourier_transform={train_cfg.fourier_transform}; drop the override or pick another model_id."
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from tsdiff.tasks.sampler_cfg import build_sampler

    run_dir = resolve_run_dir(cfg.model_id, cfg.runs_dir)
    device = resolve_device(cfg.get("device", "auto"))
    model, train_cfg, info = load_run_model(run_dir, device)
    _check_matches_run(cfg, train_cfg, run_dir.name)
    if cfg.get("data_root") is not None:
        train_cfg.data_root = cfg.data_root
    dm = instantiate(train_cfg.datamodule)
    dm.prepare_data()
    dm.setup("test")

    sampler = build_sampler(cfg, model, device)  # sampler/ and cache/ groups (tsdiff.tasks.sampler_cfg)
    cached = sampler.cache.name != "none"
    samples, stats = sampler.sample(int(cfg.num_samples), int(cfg.num_diffusion_steps), seed=int(cfg.seed), return_stats=True)
    fake = samples.float().cpu().numpy()
    if not np.isfinite(fake).all():
        raise FloatingPointError(
            "sampling produced NaN/inf values: the model diverged or the solver is unstable for this step count; "
            "try more num_diffusion_steps or another solver"
        )
    real = dm.train_array("test")
    train = dm.train_array("train")
    rng = np.random.default_rng(int(cfg.seed))
    n = len(fake)
    train_subset = train[rng.choice(len(train), size=min(n, len(train)), replace=False)]
    candidates = {"model": fake, "gaussian": gaussian_baseline(train, n, int(cfg.seed)), "train": train_subset}
    metrics = evaluate_against(real, candidates, int(cfg.num_directions), int(cfg.seed))

    out_dir = new_child_dir(run_dir / "samples")
    atomic_save_npy(out_dir / "samples.npy", fake)
    atomic_save_npy(out_dir / "samples_original_units.npy", np.asarray(dm.scaler.inverse_transform(fake), dtype=np.float32))
    atomic_save_npy(out_dir / "real.npy", real.astype(np.float32))
    save_config(cfg, out_dir / "config.yaml")
    result = {
        "run_id": run_dir.name,
        "sample_dir": str(out_dir),
        "num_samples": n,
        "num_diffusion_steps": int(cfg.num_diffusion_steps),
        "sampling": stats.as_dict(),
        "metrics": metrics,
        "beats_gaussian_swd": metrics["model"]["sliced_wasserstein"] < metrics["gaussian"]["sliced_wasserstein"],
    }
    atomic_write_json(out_dir / "metrics.json", result)
    if cfg.get("results_path"):
        atomic_write_json(Path(cfg.results_path), result)

    rows = [{"set": name, **vals} for name, vals in metrics.items()]
    print(format_table(rows, ["set", "sliced_wasserstein", "marginal_wasserstein", "spectral_density_distance"]))
    print(
        f"sampled {n} series x {int(cfg.num_diffusion_steps)} steps ({stats.solver}) in {stats.wall_time_s:.1f} s "
        f"= {stats.samples_per_s:.2f} samples/s; saved to {out_dir}",
        flush=True,
    )
    c = stats.cache
    if cached and c:
        print(
            f"cache ({c['extra'].get('path', '?')} path): {c['fraction_recomputed']:.1%} of the token-layer work recomputed, "
            f"{c['full_steps']}/{c['network_calls']} evaluations in full, hit ratio {c['hit_ratio']:.3f}, "
            f"{c['effective_network_calls']:.1f} effective network evaluations, peak cache memory {c['cache_bytes'] / 2**20:.2f} MiB",
            flush=True,
        )
    logger = build_logger(cfg.get("logger"), f"{run_dir.name}-sample-{out_dir.name}", out_dir)
    flat = {f"{name}/{k}": v for name, vals in metrics.items() for k, v in vals.items()}
    flat["samples_per_s"] = stats.samples_per_s
    if cached and c:
        flat.update({f"cache/{k}": c[k] for k in ("fraction_recomputed", "hit_ratio", "effective_network_calls", "full_steps", "cache_bytes")})
    log_metrics(logger, flat)
    return result
