"""``python cmd/benchmark_cache.py model_id=<run_id|latest>``: is E2-CRF caching faster, and is it worth it
compared with simply taking fewer steps?

What it measures (all in one process, on the run's model):

1. **Speed-up per batch size** (``batch_sizes``): one chunk of ``B`` samples, uncached and cached, timed
   alternately ``repeats`` times after ``warmup`` runs (ratio of medians; both sides see the same load),
   and the relative L2 of ``num_samples`` cached samples to the uncached ones from the same seed.
2. **Parameter sweeps** (``sweeps``: each option varied around the ``cache`` config) at the largest batch.
3. **Matched comparisons** (:mod:`tsdiff.tasks.bench_pareto`) at the largest batch, for the configured
   solver and each deterministic solver and step count: the uncached reference, the cache under
   test and its ``matched.variants`` (token path, step path, forecast), and fewer steps of the same solver
   (``matched.solvers`` x ``matched.steps`` for the deterministic ones),
   all from the same ``x_T`` (and Brownian path for Euler–Maruyama), timed interleaved; relative L2 to the
   reference sample by sample and whether the cache beats the fewer-steps curve at its own time.
4. **The judge**: Context-FID against the training windows (fast settings, ``context_fid``) of every set
   above and of ``num_seeds`` uncached runs with other seeds (the seed spread a cached run must stay in).
5. **Per-forward costs** (``forward_costs``, :mod:`tsdiff.tasks.bench_tokens`): full forward, token path at
   a fraction of the tokens, reused step; and ``token_scaling`` over other sequence lengths.

Results go to ``results_path`` (default ``<run>/benchmarks/<id>/results.json``) and a plot to ``plot_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tsdiff.tasks.bench_common import (
    benchmark_cache_config,
    container,
    env_info,
    interleaved_medians,
    load_model_and_data,
    make_sampler,
    quality_run,
    rel_l2,
    run_checked,
    save_figure,
    write_outputs,
)
from tsdiff.tasks.bench_pareto import judge, matched_comparison
from tsdiff.tasks.bench_tokens import forward_costs, token_scaling
from tsdiff.tasks.common import format_table
from tsdiff.tasks.sampler_cfg import cache_options, guidance_of, solver_of


def run(cfg: DictConfig) -> dict[str, Any]:
    return run_checked(cfg, _run)


def _cached_row(model, device, batch, cache_node, cfg, seed, steps, base_sampler, xb) -> dict[str, Any]:
    """Interleaved timing of one chunk against ``base_sampler`` and the relative L2 of ``num_samples``
    samples to ``xb`` (the uncached ones, same seed)."""
    s = make_sampler(model, device, batch, cache_node, solver_of(cfg), guidance=guidance_of(cfg))
    med = interleaved_medians(
        {"baseline": lambda: base_sampler.sample(batch, steps, seed=seed), "cached": lambda: s.sample(batch, steps, seed=seed)},
        int(cfg.repeats), int(cfg.warmup),
    )
    x, st = quality_run(model, device, batch, cache_node, cfg, None, seed)
    c = st.cache
    d = rel_l2(x, xb)
    return {
        "baseline_s": med["baseline"]["median_s"], "cached_s": med["cached"]["median_s"],
        "speedup": med["baseline"]["median_s"] / med["cached"]["median_s"], "rel_l2": d["mean"], "rel_l2_max": d["max"],
        "fraction_recomputed": c["fraction_recomputed"], "full_steps": c["full_steps"], "partial_steps": c["partial_steps"],
        "effective_nfe": c["effective_network_calls"], "cache_bytes": c["cache_bytes"], "path": c["extra"].get("path"),
        "tau_0": c["extra"].get("tau_0"), "times_baseline_s": med["baseline"]["times_s"], "times_cached_s": med["cached"]["times_s"],
        "x": x,
    }


def _run(cfg: DictConfig) -> dict[str, Any]:
    batch_sizes = [int(b) for b in container(cfg.batch_sizes)]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of positive integers, got {batch_sizes} (e.g. batch_sizes=[1,16,64])")
    cache_node = benchmark_cache_config(cfg)
    matched_cfg = container(cfg.get("matched")) or {}
    variants = {"e2crf": cache_node, **{k: {**cache_node, **v} for k, v in (matched_cfg.get("variants") or {}).items()}}
    solver, steps, seed = solver_of(cfg), int(cfg.num_diffusion_steps), int(cfg.seed)
    run_dir, device, model, _, train = load_model_and_data(cfg)
    torch.manual_seed(seed)
    big = max(batch_sizes)
    guidance = guidance_of(cfg)
    result: dict[str, Any] = {
        "run_id": run_dir.name, "num_samples": int(cfg.num_samples), "num_diffusion_steps": steps,
        "cache_kwargs": cache_options(cache_node), "cache_target": cache_node["_target_"], "sample_shape": list(model.sample_shape),
        "env": env_info(), "repeats": int(cfg.repeats), "warmup": int(cfg.warmup),
    }
    sets: dict[str, torch.Tensor] = {}

    # 1: speed-up and relative L2 per batch size
    table = []
    for batch in batch_sizes:
        base = make_sampler(model, device, batch, None, solver, guidance=guidance)
        xb, _ = quality_run(model, device, batch, None, cfg, None, seed)
        row = {"batch": batch, **_cached_row(model, device, batch, cache_node, cfg, seed, steps, base, xb)}
        if batch == big:
            sets["uncached"], sets["e2crf"] = xb, row["x"]
        row.pop("x")
        table.append(row)
        print(f"batch {batch}: baseline {row['baseline_s']:.3f} s, cached {row['cached_s']:.3f} s, speed-up {row['speedup']:.2f}x "
              f"({row['path']} path), rel L2 {row['rel_l2']:.4f}, recomputed {row['fraction_recomputed']:.3f}", flush=True)
    result["by_batch"] = table
    for k in range(int(cfg.num_seeds)):
        sets[f"uncached seed {k + 1}"], _ = quality_run(model, device, big, None, cfg, None, seed + 1000 * (k + 1))

    # 2: parameter sweeps at the largest batch size
    sweeps = []
    base_big = make_sampler(model, device, big, None, solver, guidance=guidance)
    for param, values in (container(cfg.sweeps) or {}).items():
        for value in values or []:
            row = _cached_row(model, device, big, {**cache_node, param: value}, cfg, seed, steps, base_big, sets["uncached"])
            row.pop("x")
            sweeps.append({"param": param, "value": value, **row})
    result["sweeps"] = sweeps

    # 3: matched comparisons (configured solver, then the deterministic ones)
    comparisons = [(solver, steps)] + [(name, int(n)) for name in matched_cfg.get("solvers") or [] for n in matched_cfg.get("steps") or []]
    fractions = [float(f) for f in matched_cfg.get("fractions", [0.25, 0.5])]
    result["matched"] = []
    for solv, n in comparisons:
        m = matched_comparison(model, device, big, solv, n, variants, fractions, int(cfg.repeats), int(cfg.warmup), seed, guidance)
        for row in m["rows"]:
            sets[f"{m['solver']}@{n}: {row['name']}"] = row.pop("x")
        result["matched"].append(m)

    # 4: the judge
    cf = container(cfg.context_fid) or {}
    if cf.get("runs", 1):
        spread = ["uncached"] + [k for k in sets if k.startswith("uncached seed")]
        result["judge"] = judge(train, sets, spread, int(cf.get("iterations", 100)), int(cf.get("runs", 1)),
                                cf.get("reference_size"), seed)
        fid, limit = result["judge"]["context_fid"], result["judge"]["limit"]
        for m in result["matched"]:
            for row in m["rows"]:
                row["context_fid"] = fid[f"{m['solver']}@{m['steps']}: {row['name']}"]
                row["cfid_within_spread"] = bool(row["context_fid"] <= limit)

    # 5: per-forward costs
    fc, ts = container(cfg.forward_costs) or {}, container(cfg.token_scaling) or {}
    result["forward_costs"] = forward_costs(model, device, fc.get("batches", []), fc.get("fractions", []), int(fc.get("repeats", 5)), seed)
    result["token_scaling"] = token_scaling(model, device, ts.get("lengths", []), ts.get("batches", []), ts.get("fractions", []),
                                            int(ts.get("repeats", 5)), seed) if ts.get("lengths") else []

    results_path, plot_path = write_outputs(cfg, run_dir, "cache", result)
    _plot(result, plot_path)
    _print_report(result)
    print(f"results: {results_path}\nplot: {plot_path}", flush=True)
    result["results_path"], result["plot_path"] = str(results_path), str(plot_path)
    return result


def _print_report(result: dict[str, Any]) -> None:
    print("\n== E2-CRF vs uncached (interleaved medians; speed-up = baseline / cached) ==")
    print(format_table(result["by_batch"], ["batch", "path", "tau_0", "baseline_s", "cached_s", "speedup", "rel_l2", "rel_l2_max",
                                            "fraction_recomputed", "full_steps", "effective_nfe", "cache_bytes"]))
    if result["sweeps"]:
        print("\n== parameter sweeps (largest batch) ==")
        print(format_table(result["sweeps"], ["param", "value", "path", "speedup", "rel_l2", "fraction_recomputed", "full_steps"]))
    j = result.get("judge")
    if j:
        print(f"\nContext-FID to the training windows, uncached seeds: {', '.join(f'{v:.3f}' for v in j['uncached_spread'])} "
              f"(limit mean + 2 std {j['limit']:.3f})")
    for m in result["matched"]:
        noise = "same x_T and Brownian path" if m["brownian_matched"] else "same x_T"
        print(f"\n== {m['solver']}, {m['steps']} steps, batch {m['batch']} ({noise}; rel L2 to the uncached {m['steps']}-step samples) ==")
        rows = sorted(m["rows"], key=lambda r: r["time_per_sample_s"])
        print(format_table(rows, ["name", "steps", "path", "time_per_sample_s", "speedup", "rel_l2", "context_fid", "cfid_within_spread",
                                  "fraction_recomputed", "fewer_steps_rel_l2_at_same_time", "beats_fewer_steps"]))
    if result["forward_costs"]:
        print("\n== per-forward cost of the run's network (ms) ==")
        rows = result["forward_costs"]
        print(format_table(rows, [k for k in rows[0] if k.endswith(("_ms", "_speedup")) or k in ("batch", "tokens", "patch")]))
    if result["token_scaling"]:
        print("\n== token path per-forward speed-up at other lengths (random weights, this model's width, one position per token) ==")
        print(format_table(result["token_scaling"], ["length", "batch", "fraction", "full_ms", "token_ms", "speedup"]))


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result["matched"])
    fig, axes = plt.subplots(1, n + 1, figsize=(4.5 * (n + 1), 3.8))
    for ax, m in zip(axes, result["matched"]):
        fewer = sorted((r for r in m["rows"] if r["method"] != "e2crf"), key=lambda r: r["time_per_sample_s"])
        ax.plot([1e3 * r["time_per_sample_s"] for r in fewer], [r["rel_l2"] for r in fewer], "o-", label="fewer steps / uncached")
        for r in m["rows"]:
            if r["method"] == "e2crf":
                ax.plot(1e3 * r["time_per_sample_s"], r["rel_l2"], "s", label=r["name"])
        ax.set_xlabel("ms per sample")
        ax.set_ylabel("rel L2 to uncached")
        ax.set_title(f"{m['solver']} {m['steps']} steps", fontsize=9)
        ax.legend(fontsize=6)
    rows = result["by_batch"]
    axes[-1].bar([str(r["batch"]) for r in rows], [r["speedup"] for r in rows])
    axes[-1].axhline(1.0, color="k", lw=0.8)
    axes[-1].set_xlabel("batch size")
    axes[-1].set_ylabel("speed-up (median)")
    save_figure(fig, path)
