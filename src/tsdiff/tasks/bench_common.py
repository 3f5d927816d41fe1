"""Helpers shared by the cache benchmarks (``benchmark_cache``, ``ablation_cache``): option checks, loading
the run, samplers with a fresh cache policy per run, interleaved timing (medians), quality measures and
atomic outputs."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tsdiff.results import free_path, stamp, write_result
from tsdiff.runs import new_child_dir, resolve_run_dir
from tsdiff.tasks.common import load_run_model
from tsdiff.tasks.sampler_cfg import NO_CACHE, build_cache, cache_config, cache_options, guidance_of, solver_of
from tsdiff.utils import resolve_device


def container(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_common(cfg: DictConfig) -> None:
    """Clear errors for the shared benchmark options."""
    for key in ("num_samples", "num_diffusion_steps", "repeats"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r} (e.g. {key}=3)")
    if not isinstance(cfg.get("warmup"), int) or cfg.warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {cfg.get('warmup')!r}")


def set_threads(cfg: DictConfig) -> int:
    """Apply ``num_threads`` (if set); returns the previous thread count so the caller can restore it."""
    prev = torch.get_num_threads()
    n = cfg.get("num_threads")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_threads must be a positive integer or null, got {n!r}")
        torch.set_num_threads(n)
    return prev


def run_checked(cfg: DictConfig, body) -> dict[str, Any]:
    """Validate the shared options, apply ``num_threads`` for the duration of ``body(cfg)``, restore it."""
    check_common(cfg)
    prev_threads = set_threads(cfg)
    try:
        return body(cfg)
    finally:
        torch.set_num_threads(prev_threads)


def load_model_and_data(cfg: DictConfig):
    """The run's model (on the configured device) and its test / train windows."""
    from hydra.utils import instantiate

    run_dir = resolve_run_dir(cfg.model_id, cfg.runs_dir)
    device = resolve_device(cfg.get("device", "auto"))
    model, train_cfg, _ = load_run_model(run_dir, device)
    if cfg.get("data_root") is not None:
        train_cfg.data_root = cfg.data_root
    dm = instantiate(train_cfg.datamodule)
    dm.prepare_data()
    dm.setup("test")
    return run_dir, device, model, dm.train_array("test"), dm.train_array("train")


def benchmark_cache_config(cfg: DictConfig) -> dict[str, Any]:
    """The cache under test (``cache`` group plus ``cache_kwargs`` aliases), validated by building it once."""
    node = cache_config(cfg)
    if node.get("_target_") == NO_CACHE:
        raise ValueError("the cache benchmarks compare a cache with no cache; choose one, e.g. cache=e2crf")
    build_cache(node)  # validate the parameters before any work
    return node


def make_sampler(model, device, batch: int, cache: dict | None, solver: Any = "auto", solver_kwargs: dict | None = None,
                 guidance: Any = None):
    """A sampler of chunks of ``batch`` with a fresh policy from the cache node ``cache`` (None: no cache) and the
    configured ``sampler.guidance`` hook (both sides of every comparison get the same one)."""
    from tsdiff.sampling import DiffusionSampler

    return DiffusionSampler(
        model, sample_batch_size=batch, solver=solver, solver_kwargs=solver_kwargs,
        cache=build_cache(cache) if cache is not None else None, guidance=guidance, device=device, progress=False,
    )


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Median wall time of each function: ``warmup`` untimed calls each, then ``repeats`` rounds in which
    every function runs once (order reversed every other round), timed with ``perf_counter``."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(v), "times_s": v} for n, v in times.items()}


def swd(real: np.ndarray, fake: np.ndarray, cfg: DictConfig) -> float:
    from tsdiff.metrics.wasserstein import sliced_wasserstein

    return float(sliced_wasserstein(real, fake, num_directions=int(cfg.num_directions), seed=int(cfg.seed)))


def rel_l2(fake: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Per-sample relative L2 distance of ``fake`` to ``ref`` (mean, median, max over samples)."""
    d = (fake - ref).flatten(1).norm(dim=1) / (ref.flatten(1).norm(dim=1) + 1e-12)
    return {"mean": float(d.mean()), "median": float(d.median()), "max": float(d.max())}


def quality_run(model, device, batch: int, cache, cfg, real, seed: int, steps: int | None = None, solver: Any = None):
    """``num_samples`` samples (chunks of ``batch``) with their stats; finite-checked. ``solver`` defaults
    to the configured one (``sampler`` group)."""
    solver = solver_of(cfg) if solver is None else solver
    sampler = make_sampler(model, device, batch, cache, solver, guidance=guidance_of(cfg))
    x, stats = sampler.sample(int(cfg.num_samples), steps or int(cfg.num_diffusion_steps), seed=seed, return_stats=True)
    x = x.float().cpu()
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"sampling produced NaN/inf (cache={cache_options(cache)}, solver={solver}, steps={steps}); "
            "the cache thresholds are too loose for this model: lower tau_0 or R"
        )
    return x, stats


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (a half-written plot never replaces a good one), then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        write_result(path, fig)  # never over an existing file: a free name beside it is used and printed
    finally:
        plt.close(fig)


def write_outputs(cfg: DictConfig, run_dir: Path, kind: str, result: dict[str, Any]) -> tuple[Path, Path]:
    out_dir = None
    results_path = cfg.get("results_path")
    if not results_path:
        out_dir = new_child_dir(run_dir / "benchmarks", prefix=f"{kind}-")
        results_path = out_dir / "results.json"
    result.update(stamp({"cache": "benchmark"}.get(kind, kind), result, run_id=run_dir.name))  # in place: the caller prints and returns this dict
    results_path = write_result(Path(results_path), result)  # the name written (a free one if taken)
    plot_path = cfg.get("plot_path") or free_path(results_path.with_suffix(".png"))
    return results_path, Path(plot_path)


def env_info() -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
