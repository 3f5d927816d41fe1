"""``python cmd/ablation_cache.py model_id=<run_id|latest>``: what each part of E2-CRF contributes.

Variants, all sampled from the same seed (same noise) at ``batch_size`` with ``num_diffusion_steps``:

* ``baseline`` -- no cache;
* ``e2crf`` -- the full method (the ``cache`` config, default ``conf/cache/e2crf.yaml``);
* the ``variants`` of the config, each a change to ``cache`` (the same as ``cache=e2crf_no_event`` ...):
  ``no_event`` -- without the event-driven trigger (only forced low-frequency tokens, probes, refreshes);
  ``no_feedback`` -- without error feedback (the sensitivities keep their first calibration);
  ``no_energy`` -- without the energy-weighted threshold (every token gets the same threshold ``tau_0``);
  ``forecast`` -- an addition rather than an ablation: reused residuals extrapolated linearly from their
  last two computed values (TaylorSeer order 1) instead of held;
* ``naive`` -- naive fixed reuse: everything recomputed every ``R_naive`` steps and reused in between, with
  ``R_naive`` chosen so that it does the same number of effective network evaluations as ``e2crf``;
* ``random`` -- the token path recomputing *random* tokens, with the budget chosen so that the fraction
  of recomputed tokens matches ``e2crf``'s (same refresh interval).

For each: median wall time over ``repeats`` runs (interleaved with the baseline, after ``warmup``),
speed-up, sliced Wasserstein distance to the test windows, per-sample relative L2 to the baseline
samples, fraction of tokens recomputed and effective network evaluations. Table on stdout, JSON at
``results_path`` and a bar plot at ``plot_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tsdiff.tasks.bench_common import (
    benchmark_cache_config, env_info, container, interleaved_medians, load_model_and_data, make_sampler, quality_run, rel_l2,
    run_checked, save_figure, swd, write_outputs,
)
from tsdiff.tasks.common import format_table
from tsdiff.tasks.sampler_cfg import E2CRF, build_cache, cache_options, guidance_of, solver_of


def _matched_variants(kw: dict[str, Any], e2: dict[str, Any], steps: int) -> dict[str, dict[str, Any]]:
    """``naive`` (``conf/cache/e2crf_naive.yaml``) and ``random`` (``e2crf_random.yaml``) at the same budget
    as the measured full method ``e2`` (its cache stats): E2-CRF cache nodes."""
    r = int(kw.get("R", 10))
    eff = max(float(e2["effective_network_calls"]), 1.0)
    r_naive = max(1, int(round(steps / eff)))
    frac = float(e2["fraction_recomputed"])
    budget = (frac - 1.0 / r) / max(1.0 - 1.0 / r, 1e-9)
    budget = float(min(1.0, max(budget, 0.01)))
    base = {"_target_": E2CRF, **{k: v for k, v in kw.items() if k in ("seed",)}}
    return {
        "naive": {**base, "selection": "fixed", "R": r_naive},
        "random": {**base, "selection": "random", "budget": budget, "R": r, "mode": "token"},
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    return run_checked(cfg, _run)


def _run(cfg: DictConfig) -> dict[str, Any]:
    batch = cfg.get("batch_size")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch!r} (e.g. batch_size=64)")
    steps = int(cfg.num_diffusion_steps)
    kw = benchmark_cache_config(cfg)
    solver = solver_of(cfg)
    changes = container(cfg.get("variants")) or {}
    variants: dict[str, dict[str, Any]] = {"e2crf": kw, **{name: {**kw, **delta} for name, delta in changes.items()}}
    for node in variants.values():
        build_cache(node)  # validate every variant before any work
    run_dir, device, model, real, _ = load_model_and_data(cfg)
    seed = int(cfg.seed)

    xb, _ = quality_run(model, device, batch, None, cfg, real, seed)
    samples: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for name, v in variants.items():
        samples[name], st = quality_run(model, device, batch, v, cfg, real, seed)
        stats[name] = st.cache
    matched = _matched_variants(kw, stats["e2crf"], steps)
    variants.update(matched)
    for name in matched:
        samples[name], st = quality_run(model, device, batch, variants[name], cfg, real, seed)
        stats[name] = st.cache

    samplers = {"baseline": make_sampler(model, device, batch, None, solver, guidance=guidance_of(cfg))}
    samplers.update({name: make_sampler(model, device, batch, v, solver, guidance=guidance_of(cfg)) for name, v in variants.items()})
    med = interleaved_medians(
        {name: (lambda s=s: s.sample(batch, steps, seed=seed)) for name, s in samplers.items()},
        int(cfg.repeats), int(cfg.warmup),
    )
    base_t = med["baseline"]["median_s"]
    rows = [{
        "variant": "baseline", "time_s": base_t, "speedup": 1.0, "swd": swd(real, xb.numpy(), cfg), "rel_l2": 0.0,
        "fraction_recomputed": 1.0, "effective_nfe": float(steps), "full_steps": steps, "path": "-",
        "cache_kwargs": None, "times_s": med["baseline"]["times_s"],
    }]
    for name, v in variants.items():
        c = stats[name]
        rows.append({
            "variant": name, "time_s": med[name]["median_s"], "speedup": base_t / med[name]["median_s"],
            "swd": swd(real, samples[name].numpy(), cfg), "rel_l2": rel_l2(samples[name], xb)["mean"],
            "fraction_recomputed": c["fraction_recomputed"], "effective_nfe": c["effective_network_calls"],
            "full_steps": c["full_steps"], "path": c["extra"].get("path"), "cache_kwargs": cache_options(v),
            "times_s": med[name]["times_s"],
        })
    result = {
        "run_id": run_dir.name, "batch_size": batch, "num_samples": int(cfg.num_samples), "num_diffusion_steps": steps,
        "cache_kwargs": cache_options(kw), "repeats": int(cfg.repeats), "warmup": int(cfg.warmup), "env": env_info(), "variants": rows,
    }
    results_path, plot_path = write_outputs(cfg, run_dir, "ablation", result)
    _plot(rows, plot_path)
    print(format_table(rows, ["variant", "path", "time_s", "speedup", "swd", "rel_l2", "fraction_recomputed", "effective_nfe", "full_steps"]))
    print(f"results: {results_path}\nplot: {plot_path}", flush=True)
    result["results_path"], result["plot_path"] = str(results_path), str(plot_path)
    return result


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("speedup", "swd", "rel_l2"), ("speed-up (median)", "sliced Wasserstein", "relative L2 to baseline")):
        ax.bar(names, [r[key] for r in rows])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    save_figure(fig, path)
