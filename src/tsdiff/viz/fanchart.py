"""Fan chart of probabilistic forecasts: history, truth, median and the 50/80/95% central bands.

Input is the ``fan_chart`` entry the forecast command writes into ``forecast.json``
(:func:`tsdiff.tasks.forecast.run`): lists per window of the last ``history`` lookback values, the
truth, the sample median and ``bands[level] = {"lo": ..., "hi": ...}``. Uses matplotlib's Agg backend
(no display needed) and returns the figure; the caller saves it (``tsdiff.results.write_result``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_fan_chart"]

_BAND_ALPHA = {"95": 0.15, "80": 0.25, "50": 0.4}


def plot_fan_chart(data: dict[str, Any], title: str | None = None, max_columns: int = 2):
    """One panel per window: the lookback tail, then the bands (widest first), the median and the truth."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    missing = [k for k in ("history", "truth", "median", "bands") if k not in data]
    if missing:
        raise ValueError(f"fan chart data lacks {missing}; pass the 'fan_chart' entry of a forecast.json")
    n = len(data["truth"])
    if n == 0:
        raise ValueError("fan chart data holds no window")
    cols = min(int(max_columns), n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        hist = np.asarray(data["history"][i], dtype=float)
        truth = np.asarray(data["truth"][i], dtype=float)
        t_hist = np.arange(-len(hist) + 1, 1)
        t_fut = np.arange(1, len(truth) + 1)
        ax.plot(t_hist, hist, color="0.3", lw=1, label="lookback")
        for level in sorted(data["bands"], key=float, reverse=True):
            band = data["bands"][level]
            ax.fill_between(t_fut, band["lo"][i], band["hi"][i], color="C0", alpha=_BAND_ALPHA.get(str(level), 0.2),
                            lw=0, label=f"{level}% interval")
        ax.plot(t_fut, data["median"][i], color="C0", lw=1.2, label="median")
        ax.plot(t_fut, truth, color="k", lw=1, ls="--", label="truth")
        idx = data.get("window_index")
        ax.set_title(f"test window {idx[i]}" if idx else f"window {i}", fontsize=9)
        ax.axvline(0.5, color="0.6", lw=0.5)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
