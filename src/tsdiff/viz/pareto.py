"""The cache's speed-vs-quality picture: time per sample against sample quality, one curve per method.

Input: the points of :func:`tsdiff.results.pareto_points` -- one equal-time comparison of
``cmd/benchmark_cache.py`` (uncached, E2-CRF variants and fewer steps of the same solver on the same noise path)
or the variants of ``cmd/ablation_cache.py`` -- with their time per sample and relative L2 to the uncached
samples (the benchmark's yardstick; SWD ranks fewer Euler-Maruyama steps above more, docs/e2crf.md). A point is
on the Pareto front when no other point is at least as fast and at least as good; the front is drawn as a step
line, so a method "wins" where its points lie on it. Lower is better.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["pareto_front", "pareto_plot"]


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated ``(time, error)`` points (lower is better in both), sorted by time."""
    front: list[tuple[float, float]] = []
    for t, e in sorted(points):
        if not front or e < front[-1][1]:
            front.append((t, e))
    return front


def pareto_plot(rows: list[dict[str, Any]], x: str = "time_per_sample_s", y: str = "rel_l2", title: str | None = None):
    """Scatter of ``rows`` (one colour per ``group``) with the Pareto front; ``x``/``y`` are the keys."""
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        raise ValueError(f"no row has both '{x}' and '{y}'; pass the rows of tsdiff.results.pareto_points")
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in dict.fromkeys(r["group"] for r in pts):
        mine = sorted((r for r in pts if r["group"] == group), key=lambda r: r[x])
        curve = len(mine) > 1 and group in ("fewer-steps", "e2crf-sweep")  # step counts form a curve; variants do not
        ax.plot([r[x] for r in mine], [r[y] for r in mine], "o-" if curve else "o", label=group, alpha=0.8)
        if not curve:
            for r in mine:
                ax.annotate(str(r.get("label", "")), (r[x], r[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front((r[x], r[y]) for r in pts)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, ls="--", marker="s",
            markerfacecolor="none", markersize=9, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(f"{y} (lower is better)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
