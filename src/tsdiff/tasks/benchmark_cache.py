"""``python cmd/benchmark_cache.py model_id=<run_id|latest>``: is E2-CRF caching really faster, and is it
worth it compared with simply taking fewer steps?

What it measures (all in one process, on the run's model):

1. **Speed-up per batch size** (``batch_sizes``): one chunk of ``B`` samples with ``num_diffusion_steps``
   steps, uncached and cached, after ``warmup`` runs of each; the two are then run alternately
   ``repeats`` times (order swapped every repeat) and the medians compared. Alternating in one process
   makes both sides see the same machine load, which matters on a shared CPU.
2. **Quality** per batch size: ``num_samples`` samples cached and uncached from the same seed (hence the
   same noise: the cache draws from its own generator): sliced Wasserstein distance (SWD) of each to the
   test windows, and the per-sample relative L2 distance ``|x_cached - x_uncached| / |x_uncached|``.
   ``num_seeds`` uncached runs with different seeds give the seed-to-seed spread of SWD that the cached
   SWD is judged against (``within_spread``: at most the uncached mean + 2 std).
3. **Parameter sweeps** of the seed README (``sweeps``: each E2-CRF parameter varied around the
   ``cache`` config) at the largest batch size: time, speed-up, SWD, relative L2, fraction recomputed.
   ``K``, ``tau_warn`` and ``random_probe_ratio`` act only on the token path; when the default run takes
   the step path they are swept with ``mode=token`` next to a token-path reference point.
4. **Pareto comparison at matched wall time** (largest batch size; SWD and relative L2 to the uncached
   samples): the same sampler with fewer steps
   (``fewer_steps``), DPM-Solver++ and the probability-flow ODE with few steps (``competitors``), and the
   E2-CRF points -- SWD against time per sample, so a user sees curves, not one point.
   ``beats_fewer_steps`` says whether the E2-CRF default lies below the fewer-steps curve (linear
   interpolation in time) at its own wall time. SWD to the test windows is a coarse judge here (fewer
   Euler–Maruyama steps can score *better* than 100), so
4b. **Brownian-matched fewer steps** (``brownian_matched``, Euler–Maruyama models): the reference, the
   cached run and fewer-step runs share ``x_T`` and one Brownian path, so relative L2 to the reference
   compares them sample by sample; ``beats`` says whether E2-CRF is closer than fewer steps at its time.
5. **Token scaling** (``token_scaling``): per-forward speed-up of the token path over a full forward for
   random-weight networks of the run's width at several sequence lengths, batch sizes and recompute
   fractions -- which sequence length the token path needs to pay.

Results go to ``results_path`` (default ``<run>/benchmarks/<id>/results.json``) and a plot to ``plot_path``.
Timings on a machine shared with other processes are noisy; the JSON keeps every repeat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from tsdiff.tasks.bench_common import (
    benchmark_cache_config, env_info, container, interleaved_medians, load_model_and_data, make_sampler, quality_run, rel_l2,
    run_checked, save_figure, swd, write_outputs,
)
from tsdiff.tasks.common import format_table
from tsdiff.sampling.solvers import solver_label
from tsdiff.tasks.sampler_cfg import cache_options, guidance_of, solver_of


#: parameters that only act on the token path (swept there when the default run takes the step path)
TOKEN_ONLY_PARAMS = ("K", "tau_warn", "random_probe_ratio")


# ---------------------------------------------------------------------- token scaling
def token_scaling(model, device, lengths, batches, fractions, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Per-forward time of a full forward vs the token path recomputing a fraction of the tokens, for
    random-weight transformers shaped like ``model``'s at other sequence lengths (weights do not
    change the cost)."""
    from tsdiff.caching import TokenE2CRF
    from tsdiff.nets.score_nets import TransformerScoreNet
    from tsdiff.sampling.contract import DeclaresCache, declares

    iface = model.cache_interface() if declares(model, DeclaresCache) else None
    net0 = iface.tokens if iface is not None else None
    if not isinstance(net0, TransformerScoreNet):
        return []
    layer0 = net0.layers[0]
    rows = []
    gen = torch.Generator(device=device).manual_seed(seed)
    for length in lengths:
        torch.manual_seed(seed)
        net = TransformerScoreNet(
            net0.n_channels, int(length), d_model=net0.d_model, num_layers=len(net0.layers),
            num_heads=layer0.num_heads, dim_feedforward=layer0.ff1.out_features,
        ).to(device).eval()
        for batch in batches:
            x = torch.randn(batch, int(length), net0.n_channels, generator=gen, device=device)
            t = torch.full((batch,), 0.5, device=device)
            cache = TokenE2CRF()
            cache.attach(net)  # a bare network: drive the token path directly
            with torch.inference_mode():
                cache.refresh(x, t)
                fns: dict[str, Callable[[], Any]] = {"full": lambda: net(x, t)}
                for frac in fractions:
                    n = max(1, int(round(frac * length)))
                    sel = torch.zeros(batch, int(length), dtype=torch.bool, device=device)
                    sel[:, torch.randperm(int(length), generator=torch.Generator().manual_seed(seed))[:n].to(device)] = True

                    def partial(n=n, sel=sel):
                        return cache.partial_forward(x, t, sel, n)

                    fns[f"frac={frac}"] = partial
                med = interleaved_medians(fns, repeats, 1)
            for frac in fractions:
                rows.append({
                    "length": int(length), "batch": int(batch), "fraction": float(frac),
                    "full_ms": 1e3 * med["full"]["median_s"], "token_ms": 1e3 * med[f"frac={frac}"]["median_s"],
                    "speedup": med["full"]["median_s"] / med[f"frac={frac}"]["median_s"],
                })
    return rows


# ---------------------------------------------------------------------- main
def run(cfg: DictConfig) -> dict[str, Any]:
    return run_checked(cfg, _run)


def _run(cfg: DictConfig) -> dict[str, Any]:
    batch_sizes = [int(b) for b in container(cfg.batch_sizes)]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of positive integers, got {batch_sizes} (e.g. batch_sizes=[1,16,64])")
    cache_node = benchmark_cache_config(cfg)
    cache_kwargs = cache_options(cache_node)
    solver = solver_of(cfg)
    steps = int(cfg.num_diffusion_steps)
    run_dir, device, model, real, _ = load_model_and_data(cfg)
    torch.manual_seed(int(cfg.seed))
    seed = int(cfg.seed)
    result: dict[str, Any] = {
        "run_id": run_dir.name, "num_samples": int(cfg.num_samples), "num_diffusion_steps": steps,
        "cache_kwargs": cache_kwargs, "cache_target": cache_node["_target_"], "sample_shape": list(model.sample_shape), "env": env_info(),
        "repeats": int(cfg.repeats), "warmup": int(cfg.warmup),
    }

    # seed-to-seed spread of uncached SWD (largest batch size)
    big = max(batch_sizes)
    seed_swd = []
    for k in range(int(cfg.num_seeds)):
        x, _ = quality_run(model, device, big, None, cfg, real, seed + 1000 * (k + 1))
        seed_swd.append(swd(real, x.numpy(), cfg))
    spread = {
        "swd": seed_swd,
        "mean": float(np.mean(seed_swd)) if seed_swd else float("nan"),
        "std": float(np.std(seed_swd, ddof=1)) if len(seed_swd) > 1 else 0.0,
    }
    limit = spread["mean"] + 2 * spread["std"] if seed_swd else float("inf")
    result["uncached_seed_spread"] = spread

    # 1 + 2: speed-up and quality per batch size
    table = []
    for batch in batch_sizes:
        base_s = make_sampler(model, device, batch, None, solver, guidance=guidance_of(cfg))
        cache_s = make_sampler(model, device, batch, cache_node, solver, guidance=guidance_of(cfg))
        med = interleaved_medians(
            {"baseline": lambda: base_s.sample(batch, steps, seed=seed),
             "cached": lambda: cache_s.sample(batch, steps, seed=seed)},
            int(cfg.repeats), int(cfg.warmup),
        )
        xb, _ = quality_run(model, device, batch, None, cfg, real, seed)
        xc, cstats = quality_run(model, device, batch, cache_node, cfg, real, seed)
        c = cstats.cache
        row = {
            "batch": batch,
            "baseline_s": med["baseline"]["median_s"], "cached_s": med["cached"]["median_s"],
            "speedup": med["baseline"]["median_s"] / med["cached"]["median_s"],
            "swd_baseline": swd(real, xb.numpy(), cfg), "swd_cached": swd(real, xc.numpy(), cfg),
            "rel_l2": rel_l2(xc, xb)["mean"], "rel_l2_max": rel_l2(xc, xb)["max"],
            "fraction_recomputed": c["fraction_recomputed"], "hit_ratio": c["hit_ratio"],
            "full_steps": c["full_steps"], "partial_steps": c["partial_steps"],
            "effective_nfe": c["effective_network_calls"], "cache_bytes": c["cache_bytes"],
            "path": c["extra"].get("path"),
            "times_baseline_s": med["baseline"]["times_s"], "times_cached_s": med["cached"]["times_s"],
        }
        row["within_spread"] = bool(row["swd_cached"] <= limit)
        table.append(row)
        print(f"batch {batch}: baseline {row['baseline_s']:.3f} s, cached {row['cached_s']:.3f} s, "
              f"speed-up {row['speedup']:.2f}x ({row['path']} path), SWD {row['swd_baseline']:.4f} -> {row['swd_cached']:.4f}, "
              f"rel L2 {row['rel_l2']:.4f}, recomputed {row['fraction_recomputed']:.3f}", flush=True)
    result["by_batch"] = table

    # 3: parameter sweeps at the largest batch size
    sweeps = []
    base_big = make_sampler(model, device, big, None, solver, guidance=guidance_of(cfg))
    xb_big, _ = quality_run(model, device, big, None, cfg, real, seed)
    default_path = next(r for r in table if r["batch"] == big)["path"]
    token_reference = False
    for param, values in (container(cfg.sweeps) or {}).items():
        # K, tau_warn and the probes only act on the token path: sweep them there (plus one reference
        # point of the token path with the base parameters) instead of printing identical step-path rows
        on_token = param in TOKEN_ONLY_PARAMS and default_path != "token"
        if on_token and "mode" not in cache_node:
            continue  # a policy without a token path (e.g. cache=e2crf_step): nothing to sweep
        if on_token and values and not token_reference:
            kw = {**cache_node, "mode": "token"}
            sweeps.append({"param": "mode", "value": "token", **_point(model, device, big, kw, cfg, real, seed, steps, base_big, xb_big)})
            token_reference = True
        for value in values:
            kw = {**cache_node, param: value, **({"mode": "token"} if on_token else {})}
            sweeps.append({"param": param, "value": value, **_point(model, device, big, kw, cfg, real, seed, steps, base_big, xb_big)})
    result["sweeps"] = sweeps

    # 4: Pareto comparison at matched wall time (largest batch size)
    pareto = []
    per_sample = lambda s: s / big  # noqa: E731
    default_row = next(r for r in table if r["batch"] == big)
    pareto.append({"method": "uncached", "steps": steps, "time_per_sample_s": per_sample(default_row["baseline_s"]), "swd": default_row["swd_baseline"], "rel_l2": 0.0})
    pareto.append({"method": "e2crf", "steps": steps, "time_per_sample_s": per_sample(default_row["cached_s"]), "swd": default_row["swd_cached"],
                   "rel_l2": default_row["rel_l2"], "cache_kwargs": cache_kwargs})
    for s in sweeps:
        pareto.append({"method": "e2crf-sweep", "steps": steps, "time_per_sample_s": per_sample(s["cached_s"]), "swd": s["swd"],
                       "rel_l2": s["rel_l2"], "param": s["param"], "value": s["value"]})
    matched = max(2, int(round(steps / max(default_row["speedup"], 1e-9))))
    fewer = sorted({*(int(v) for v in container(cfg.fewer_steps)), matched})
    comps = [("fewer-steps", solver, n) for n in fewer if n < steps]
    for comp, ns in (container(cfg.competitors) or {}).items():
        label = "dpm_solver++" if comp in ("dpmpp", "dpm_solver++") else str(comp)
        comps += [(label, comp, int(n)) for n in ns]
    for method, comp, n in comps:
        s_ = make_sampler(model, device, big, None, comp, guidance=guidance_of(cfg))
        med = interleaved_medians({"m": lambda: s_.sample(big, n, seed=seed)}, int(cfg.repeats), min(int(cfg.warmup), 1))
        x, _ = quality_run(model, device, big, None, cfg, real, seed, steps=n, solver=comp)
        pareto.append({"method": method, "solver": solver_label(comp), "steps": n, "time_per_sample_s": per_sample(med["m"]["median_s"]),
                       "swd": swd(real, x.numpy(), cfg), "rel_l2": rel_l2(x, xb_big)["mean"]})
    result["pareto"] = pareto
    result["beats_fewer_steps"] = _beats_curve(pareto, "fewer-steps", default_row, big, spread["std"])
    result["brownian_matched"] = _brownian_matched(model, device, big, steps, cache_node, cfg, real, seed, default_row, solver)

    # 5: token scaling
    ts = container(cfg.token_scaling) or {}
    result["token_scaling"] = token_scaling(
        model, device, ts.get("lengths", []), ts.get("batches", []), ts.get("fractions", []), int(ts.get("repeats", 5)), seed,
    ) if ts.get("lengths") else []

    results_path, plot_path = write_outputs(cfg, run_dir, "cache", result)
    _plot(result, plot_path)
    _print_report(result, limit)
    print(f"results: {results_path}\nplot: {plot_path}", flush=True)
    result["results_path"], result["plot_path"] = str(results_path), str(plot_path)
    return result


def _point(model, device, batch, kw, cfg, real, seed, steps, base_sampler, xb) -> dict[str, Any]:
    s = make_sampler(model, device, batch, kw, solver_of(cfg), guidance=guidance_of(cfg))
    med = interleaved_medians(
        {"baseline": lambda: base_sampler.sample(batch, steps, seed=seed), "cached": lambda: s.sample(batch, steps, seed=seed)},
        int(cfg.get("sweep_repeats", cfg.repeats)), min(int(cfg.warmup), 1),
    )
    x, st = quality_run(model, device, batch, kw, cfg, real, seed)
    return {
        "baseline_s": med["baseline"]["median_s"], "cached_s": med["cached"]["median_s"],
        "speedup": med["baseline"]["median_s"] / med["cached"]["median_s"], "swd": swd(real, x.numpy(), cfg),
        "rel_l2": rel_l2(x, xb)["mean"], "fraction_recomputed": st.cache["fraction_recomputed"],
        "full_steps": st.cache["full_steps"], "path": st.cache["extra"].get("path"),
    }


def _brownian_matched(model, device, big, steps, cache_node, cfg, real, seed, default_row, solver) -> dict[str, Any]:
    """Fewer Euler–Maruyama steps driven by the *same* Brownian path as the uncached reference.

    With independent noise, the relative L2 of a fewer-steps sample to the reference only says that
    two different SDE paths differ. Here the reference (``steps`` steps), the cached run and every
    coarser run share ``x_T`` and the Brownian motion (:func:`~tsdiff.sampling.coarsen_brownian_noise`),
    so relative L2 measures each one's error against the same target, sample by sample. Coarse step
    counts are those whose grid is a subset of the reference grid (``n - 1`` divides ``steps - 1``).
    ``beats`` compares E2-CRF's relative L2 with the coarse curve interpolated (linearly in time per
    sample) at E2-CRF's own time."""
    from tsdiff.sampling import coarsen_brownian_noise

    probe = make_sampler(model, device, big, None, solver, guidance=guidance_of(cfg))
    if probe.solver_name != "euler_maruyama":
        return {"skipped": f"the model's default solver is {probe.solver_name}, not euler_maruyama"}
    shape = tuple(model.sample_shape)
    gen = torch.Generator().manual_seed(seed + 77)
    x_T = probe.schedule.prior_std() * torch.randn((big, *shape), generator=gen)
    noise = torch.randn((steps - 1, big, *shape), generator=gen)
    times = probe.schedule.sample_times(steps, device="cpu", spacing=probe.time_spacing)

    def draw(n, z, kw=None):
        s_ = make_sampler(model, device, big, kw, "euler_maruyama", solver_kwargs={"noise": z}, guidance=guidance_of(cfg))
        return s_.sample(big, n, x_T=x_T).float().cpu()

    ref = draw(steps, noise)
    cached = draw(steps, noise, cache_node)
    rows = [{"method": "e2crf", "steps": steps, "time_per_sample_s": default_row["cached_s"] / big,
             "rel_l2": rel_l2(cached, ref)["mean"], "swd": swd(real, cached.numpy(), cfg)}]
    counts = [n for n in range(3, steps) if (steps - 1) % (n - 1) == 0][-6:]
    for n in counts:
        timer = make_sampler(model, device, big, None, "euler_maruyama", guidance=guidance_of(cfg))
        med = interleaved_medians({"m": lambda: timer.sample(big, n, seed=seed)}, int(cfg.repeats), min(int(cfg.warmup), 1))
        x = draw(n, coarsen_brownian_noise(noise, times, n))
        rows.append({"method": "fewer-steps", "steps": n, "time_per_sample_s": med["m"]["median_s"] / big,
                     "rel_l2": rel_l2(x, ref)["mean"], "swd": swd(real, x.numpy(), cfg)})
    curve = sorted((r["time_per_sample_s"], r["rel_l2"]) for r in rows if r["method"] == "fewer-steps")
    curve.append((default_row["baseline_s"] / big, 0.0))
    t = rows[0]["time_per_sample_s"]
    at_time = None
    for (t0, e0), (t1, e1) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            at_time = e0 + (e1 - e0) * (t - t0) / max(t1 - t0, 1e-12)
    faster = [e for t_, e in curve if t_ <= t]
    ref_err = min([e for e in [at_time, *faster] if e is not None], default=None)
    return {"rows": rows, "fewer_steps_rel_l2_at_same_time": ref_err,
            "beats": None if ref_err is None else bool(rows[0]["rel_l2"] < ref_err)}


def _beats_curve(pareto, method, row, big, seed_std: float = 0.0) -> dict[str, Any]:
    """Is the E2-CRF point better than anything the ``method`` curve reaches in the same or less time?

    The reference is the best SWD among the curve's points that are at least as fast, and the curve
    (linear in time per sample) interpolated at E2-CRF's own time; a difference smaller than the uncached
    seed-to-seed standard deviation is reported as such (``within_noise``)."""
    pts = sorted((p["time_per_sample_s"], p["swd"]) for p in pareto if p["method"] in (method, "uncached"))
    t = row["cached_s"] / big
    if len(pts) < 2:
        return {"answer": None, "reason": "too few fewer-steps points"}
    candidates = [s_ for t_, s_ in pts if t_ <= t]
    for (t0, s0), (t1, s1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            candidates.append(s0 + (s1 - s0) * (t - t0) / max(t1 - t0, 1e-12))
    if not candidates:
        candidates, note = [pts[0][1]], "E2-CRF is faster than every fewer-steps point; compared with the fastest"
    else:
        note = "best fewer-steps SWD at equal or lower time"
    ref = min(candidates)
    diff = ref - row["swd_cached"]
    return {"answer": bool(diff > 0), "within_noise": bool(abs(diff) < seed_std), "e2crf_swd": row["swd_cached"],
            "fewer_steps_swd_at_same_time": ref, "note": note}


def _print_report(result: dict[str, Any], limit: float) -> None:
    print("\n== E2-CRF vs uncached (medians over repeats; speed-up = baseline / cached) ==")
    print(format_table(result["by_batch"], ["batch", "path", "baseline_s", "cached_s", "speedup", "swd_baseline", "swd_cached",
                                            "within_spread", "rel_l2", "fraction_recomputed", "hit_ratio", "full_steps", "effective_nfe", "cache_bytes"]))
    sp = result["uncached_seed_spread"]
    print(f"uncached SWD over seeds: {', '.join(f'{v:.4f}' for v in sp['swd'])} (mean {sp['mean']:.4f}, std {sp['std']:.4f}; limit {limit:.4f})")
    if result["sweeps"]:
        print("\n== parameter sweeps (largest batch) ==")
        print(format_table(result["sweeps"], ["param", "value", "path", "speedup", "swd", "rel_l2", "fraction_recomputed", "full_steps"]))
    print("\n== speed vs quality at matched time (largest batch; time per sample) ==")
    print(format_table(sorted(result["pareto"], key=lambda p: p["time_per_sample_s"]), ["method", "steps", "param", "value", "time_per_sample_s", "swd", "rel_l2"]))
    print("(rel_l2: per-sample distance to the uncached samples of the same seed; only the cache follows the same\n"
          " noise path there -- the Brownian-matched table below compares fewer steps sample by sample)")
    b = result["beats_fewer_steps"]
    if b.get("answer") is not None:
        verdict = "YES" if b["answer"] else "NO"
        noise = " -- a difference smaller than the uncached seed-to-seed std" if b.get("within_noise") else ""
        print(f"E2-CRF beats fewer steps at equal time: {verdict} (E2-CRF SWD {b['e2crf_swd']:.4f} vs "
              f"fewer-steps {b['fewer_steps_swd_at_same_time']:.4f}; {b['note']}){noise}")
    bm = result.get("brownian_matched") or {}
    if bm.get("rows"):
        print("\n== fewer Euler-Maruyama steps on the same Brownian path (largest batch; rel_l2 to the uncached reference) ==")
        print(format_table(sorted(bm["rows"], key=lambda r: r["time_per_sample_s"]), ["method", "steps", "time_per_sample_s", "rel_l2", "swd"]))
        if bm.get("beats") is not None:
            print(f"E2-CRF closer to the uncached samples than fewer steps at equal time: {'YES' if bm['beats'] else 'NO'} "
                  f"(E2-CRF rel L2 {bm['rows'][0]['rel_l2']:.4f} vs fewer steps {bm['fewer_steps_rel_l2_at_same_time']:.4f})")
    elif bm.get("skipped"):
        print(f"\n(Brownian-matched comparison skipped: {bm['skipped']})")
    if result["token_scaling"]:
        print("\n== token path per-forward speed-up (random weights, this model's width) ==")
        print(format_table(result["token_scaling"], ["length", "batch", "fraction", "full_ms", "token_ms", "speedup"]))


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    by_method: dict[str, list] = {}
    for p in result["pareto"]:
        by_method.setdefault(p["method"], []).append(p)
    for method, pts in by_method.items():
        pts = sorted(pts, key=lambda p: p["time_per_sample_s"])
        style = "o-" if method in ("fewer-steps", "dpm_solver++", "pf_ode") else "s"
        ax.plot([1e3 * p["time_per_sample_s"] for p in pts], [p["swd"] for p in pts], style, label=method)
    sp = result["uncached_seed_spread"]
    if sp["swd"]:
        ax.axhspan(min(sp["swd"]), max(sp["swd"]), color="grey", alpha=0.2, label="uncached seed range")
    ax.set_xlabel("ms per sample")
    ax.set_ylabel("sliced Wasserstein to test")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.set_title("speed vs quality")
    ax = axes[1]
    rows = result["by_batch"]
    ax.bar([str(r["batch"]) for r in rows], [r["speedup"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up (median)")
    ax.set_title("E2-CRF speed-up")
    save_figure(fig, path)
