"""Generated sets against the TRAINING windows, the Diffusion-TS protocol, with baselines on the same footing.

Diffusion-TS (Yuan & Qiao, ICLR 2024) and K-ProtoDiff score a generator against the windows it was trained
on: both sets min-max scaled with the real set's per-channel range, Context-FID on ``fake[:N_real]`` and
the discriminative score. A number on its own says little, so :func:`compare_to_training` scores several
candidate sets (the model's samples and baselines such as a Gaussian fitted to the training windows and
real held-out windows) through the SAME feature maps: per run, one TS2Vec encoder trained on the real
windows embeds every candidate, and the discriminators of all candidates are trained in one pass with the
same real windows per run (a paired comparison that is also cheaper than separate evaluations).

Why not the test split: with a blocks split the test windows come from other periods, and against them
every set scores about the same Context-FID (on stocks ~9.3 for the model, a Gaussian and real training
windows alike), so test-split scores cannot rank generators.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ._checks import check_int, check_set, minmax_scale_like_diffusion_ts, torch_threads
from .fid import context_fid_many
from .posthoc import discriminative_scores_many
from .suite import summarize_runs

PRIMARY = ("context_fid", "discriminative")


def compare_to_training(
    real,
    candidates: dict[str, Any],
    num_runs: int = 3,
    seed: int = 0,
    context_fid_iterations: int | None = 100,
    discriminative_iterations: int = 300,
    reference_size: int | None = None,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Context-FID and discriminative score of every candidate set against ``real`` (``(N, L, C)`` each).

    Defaults are the fast settings of :func:`~tsdiff.metrics.evaluate_generation` (TS2Vec 100 iterations,
    discriminator 300 iterations, 3 runs with seeds ``seed, seed + 1, ...``); ``context_fid_iterations=None``
    is TS2Vec's own rule (200/600). ``reference_size`` caps the real windows embedded for the Context-FID
    statistics (see :func:`~tsdiff.metrics.context_fid_many`). Returns ``{"sets": {name: {metric: summary}},
    "seconds": {...}, "settings": {...}}`` where a summary holds mean, std, ci95 (95 % Student-t) and runs.
    """
    if not candidates:
        raise ValueError("candidates must name at least one generated set, e.g. {'model': samples}.")
    num_runs = check_int(num_runs, "num_runs")
    real = check_set(real, "real", min_size=2)
    names = list(candidates)
    scaled = {name: minmax_scale_like_diffusion_ts(real, candidates[name])[1] for name in names}
    r = minmax_scale_like_diffusion_ts(real, real)[0]
    seeds = [int(seed) + k for k in range(num_runs)]
    seconds: dict[str, float] = {}
    with torch_threads(num_threads):
        start = time.perf_counter()
        fids = context_fid_many(r, [scaled[n] for n in names], seeds, context_fid_iterations, device=device,
                                reference_size=reference_size)
        seconds["context_fid"] = time.perf_counter() - start
        start = time.perf_counter()
        ds = discriminative_scores_many(r, [scaled[n] for n in names], seeds, discriminative_iterations, device=device)
        seconds["discriminative"] = time.perf_counter() - start
    sets = {}
    for k, name in enumerate(names):
        sets[name] = {
            "n": int(min(len(scaled[name]), len(r))),
            "context_fid": summarize_runs(fids[k]),
            "discriminative": summarize_runs([d["score"] for d in ds[k]]),
            "discriminative_accuracy_real": summarize_runs([d["accuracy_real"] for d in ds[k]]),
            "discriminative_accuracy_fake": summarize_runs([d["accuracy_fake"] for d in ds[k]]),
        }
    seconds["total"] = seconds["context_fid"] + seconds["discriminative"]
    settings = {"n_real": int(len(r)), "num_runs": num_runs, "seed": int(seed),
                "context_fid_iterations": context_fid_iterations, "discriminative_iterations": discriminative_iterations,
                "reference_size": reference_size, "scale": "minmax with the real set's per-channel range"}
    return {"sets": sets, "seconds": seconds, "settings": settings}


def beats(result: dict[str, Any], model: str = "model", baseline: str = "gaussian") -> dict[str, dict[str, Any]]:
    """Per primary metric: does ``model`` score lower than ``baseline``, and do the 95 % intervals separate?"""
    out = {}
    for metric in PRIMARY:
        m, b = result["sets"][model][metric], result["sets"][baseline][metric]
        out[metric] = {
            "beats": bool(m["mean"] < b["mean"]),
            "separated": bool(m["mean"] + m["ci95"] < b["mean"] - b["ci95"] or b["mean"] + b["ci95"] < m["mean"] - m["ci95"]),
            "model": m["mean"],
            "baseline": b["mean"],
        }
    return out


def format_comparison(result: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """A text table of the primary metrics (mean ± 95 % interval) per set, one row per set."""
    notes = notes or {}
    header = ("set", "n", "context_fid", "discriminative", "")
    rows = [header]
    for name, vals in result["sets"].items():
        cells = [f"{vals[m]['mean']:.4f} ± {vals[m]['ci95']:.4f}" for m in PRIMARY]
        rows.append((name, str(vals["n"]), *cells, notes.get(name, "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths[:-1]))
    return "\n".join(lines)


def verdict_lines(result: dict[str, Any], model: str = "model", baseline: str = "gaussian") -> list[str]:
    """Plain sentences: does the model beat the baseline on each primary metric (lower is better)."""
    lines = []
    for metric, v in beats(result, model, baseline).items():
        word = "BEATS" if v["beats"] else "does NOT beat"
        sep = "intervals separate" if v["separated"] else "95% intervals overlap"
        lines.append(f"{model} {word} the {baseline} on {metric}: {v['model']:.4f} vs {v['baseline']:.4f} ({sep}; lower is better)")
    return lines

