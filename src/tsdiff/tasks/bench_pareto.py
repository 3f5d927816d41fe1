"""The judge of the cache benchmark: E2-CRF against fewer steps at equal time, sample by sample.

A cache is worth it only if, at its own wall time, it is closer to the uncached sampler than the same
sampler with fewer steps. :func:`matched_comparison` runs, for one solver and ``steps``:

* the uncached reference (``steps`` steps) and every cached variant, from the same ``x_T``;
* the same solver uncached with fewer steps, from the same ``x_T`` and -- for Euler–Maruyama -- the same
  Brownian path (:func:`~tsdiff.sampling.coarsen_brownian_noise`; only step counts whose grid is a subset of
  the reference grid), so that relative L2 to the reference measures each one's error on the same target;
* all of them timed interleaved in the same rounds (:func:`~tsdiff.tasks.bench_common.interleaved_medians`):
  on a shared machine every point sees the same load.

:func:`judge` adds Context-FID against the training windows (one TS2Vec encoder per run embeds every set,
fast settings) and the verdicts: ``beats_fewer_steps`` (relative L2 below the fewer-steps curve, linear in
time, at the cached point's own time) and ``cfid_within_spread`` (at most the uncached seeds' mean + 2 std).
SWD is not used: it ranks 10 Euler–Maruyama steps above 100 on these models (docs/e2crf.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tsdiff.sampling.solvers import solver_label
from tsdiff.tasks.bench_common import interleaved_medians, make_sampler, rel_l2


def fewer_step_counts(solver: str, steps: int, fractions: list[float]) -> list[int]:
    """Fewer-steps points: for Euler–Maruyama the counts whose grid is a subset of the ``steps`` grid (so
    the Brownian path can be shared; the largest four), otherwise ``round(f * steps)`` for each fraction."""
    if solver == "euler_maruyama":
        return [n for n in range(3, steps) if (steps - 1) % (n - 1) == 0][-4:]
    return sorted({max(2, int(round(f * steps))) for f in fractions if round(f * steps) < steps})


def matched_comparison(model, device, batch: int, solver: str, steps: int, caches: dict[str, dict], fractions: list[float],
                       repeats: int, warmup: int, seed: int, guidance=None) -> dict[str, Any]:
    """Uncached reference, cached variants ``caches`` (name -> cache node) and fewer steps of ``solver``,
    one chunk of ``batch`` each, same ``x_T`` (and Brownian path); rows with time per sample, relative L2
    to the reference and the samples (``"x"``, for :func:`judge`)."""
    from tsdiff.sampling import coarsen_brownian_noise

    probe = make_sampler(model, device, batch, None, solver, guidance=guidance)
    name = solver_label(probe.solver_name)
    gen = torch.Generator().manual_seed(seed + 77)
    x_T = probe.schedule.prior_std() * torch.randn((batch, *tuple(model.sample_shape)), generator=gen)
    noise, times = None, None
    if name == "euler_maruyama":
        noise = torch.randn((steps - 1, batch, *tuple(model.sample_shape)), generator=gen)
        times = probe.schedule.sample_times(steps, device="cpu", spacing=probe.time_spacing)
    counts = fewer_step_counts(name, steps, fractions)

    def sampler(n, cache=None):
        kw = {"noise": noise if n == steps else coarsen_brownian_noise(noise, times, n)} if noise is not None else None
        s = make_sampler(model, device, batch, cache, solver, solver_kwargs=kw, guidance=guidance)
        return lambda: s.sample(batch, n, x_T=x_T).float().cpu(), s

    points = {"uncached": (steps, None), **{k: (steps, v) for k, v in caches.items()}, **{f"{n} steps": (n, None) for n in counts}}
    runs = {k: sampler(n, c) for k, (n, c) in points.items()}
    samples, stats = {}, {}
    for k, (fn, s) in runs.items():
        samples[k] = fn()
        stats[k] = s.last_stats.cache
        if not torch.isfinite(samples[k]).all():
            raise FloatingPointError(f"{k} ({name}, {points[k][0]} steps) produced NaN/inf; lower tau_0 or R")
    med = interleaved_medians({k: fn for k, (fn, _) in runs.items()}, repeats, warmup)
    ref = samples["uncached"]
    rows = []
    for k, (n, c) in points.items():
        rows.append({
            "method": "uncached" if k == "uncached" else ("e2crf" if c is not None else "fewer-steps"), "name": k, "steps": n,
            "time_per_sample_s": med[k]["median_s"] / batch, "speedup": med["uncached"]["median_s"] / med[k]["median_s"],
            "rel_l2": rel_l2(samples[k], ref)["mean"], "fraction_recomputed": stats[k].get("fraction_recomputed", 1.0),
            "path": stats[k].get("extra", {}).get("path"), "times_s": med[k]["times_s"], "x": samples[k],
        })
    for row in rows:
        if row["method"] == "e2crf":
            row["fewer_steps_rel_l2_at_same_time"] = curve_at(rows, row["time_per_sample_s"])
            ref_err = row["fewer_steps_rel_l2_at_same_time"]
            row["beats_fewer_steps"] = None if ref_err is None else bool(row["rel_l2"] < ref_err)
    return {"solver": name, "steps": steps, "batch": batch, "brownian_matched": noise is not None, "rows": rows}


def curve_at(rows: list[dict[str, Any]], t: float) -> float | None:
    """Relative L2 of the fewer-steps curve (with the uncached point at 0) at time per sample ``t``: linear
    interpolation, or the best point that is at least as fast when ``t`` lies outside the curve."""
    curve = sorted((r["time_per_sample_s"], r["rel_l2"]) for r in rows if r["method"] in ("fewer-steps", "uncached"))
    if len(curve) < 2:
        return None
    at = [e0 + (e1 - e0) * (t - t0) / max(t1 - t0, 1e-12) for (t0, e0), (t1, e1) in zip(curve, curve[1:]) if t0 <= t <= t1]
    faster = [e for t_, e in curve if t_ <= t]
    best = at + faster
    return min(best) if best else curve[0][1]


def judge(real: np.ndarray, sets: dict[str, torch.Tensor], spread_names: list[str], iterations: int, runs: int,
          reference_size: int | None, seed: int) -> dict[str, Any]:
    """Context-FID of every set against the training windows ``real`` (min-max scaled with the real range,
    the Diffusion-TS protocol), one TS2Vec encoder per run shared by all sets; the uncached seed spread is
    over the sets named in ``spread_names``."""
    from tsdiff.metrics._checks import minmax_scale_like_diffusion_ts
    from tsdiff.metrics.fid import context_fid_many

    names = list(sets)
    r = minmax_scale_like_diffusion_ts(real, real)[0]
    fakes = [minmax_scale_like_diffusion_ts(real, sets[n].numpy())[1] for n in names]
    fids = context_fid_many(r, fakes, [seed + k for k in range(runs)], iterations, reference_size=reference_size)
    cfid = {n: float(np.mean(f)) for n, f in zip(names, fids)}
    spread = [cfid[n] for n in spread_names]
    limit = float(np.mean(spread) + 2 * np.std(spread, ddof=1)) if len(spread) > 1 else float("nan")
    return {"context_fid": cfid, "uncached_spread": spread, "limit": limit,
            "settings": {"iterations": iterations, "runs": runs, "reference_size": reference_size, "n_real": int(len(real))}}
