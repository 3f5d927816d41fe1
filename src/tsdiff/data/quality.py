"""Warnings for training data that looks wrong: constant channels and windows with too few distinct values.

A constant series standardizes to zeros and trains to a loss of 0 without complaint; a channel that is
quantized to a handful of levels (or stuck for long stretches) gives windows a diffusion model can only
reproduce as noise around steps. Neither is an error -- the data may really be like that -- so
:func:`check_training_data` emits a :class:`DataQualityWarning` naming the data set, the channel and
what to check, and returns the problems found.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["DataQualityWarning", "check_training_data"]

REL_SPREAD = 1e-6        # channel std below this fraction of its scale counts as (near) constant
MIN_DISTINCT = 3         # a window channel with fewer distinct values than this counts as degenerate
MAX_DEGENERATE = 0.25    # warn when more than this share of (window, channel) pairs is degenerate


class DataQualityWarning(UserWarning):
    """The training data looks suspicious (constant channel, degenerate windows)."""


def check_training_data(raw: np.ndarray, windows: np.ndarray | None, name: str) -> list[str]:
    """Warn about (near-)constant channels of ``raw`` ``(..., C)`` and degenerate ``windows`` ``(N, L, C)``."""
    problems = []
    flat = np.asarray(raw, dtype=np.float64).reshape(-1, np.shape(raw)[-1])
    finite = np.where(np.isfinite(flat), flat, np.nan)
    std = np.nanstd(finite, axis=0)
    scale = np.maximum(np.nanmax(np.abs(finite), axis=0), 1e-12)
    for c in np.flatnonzero(~(std > REL_SPREAD * scale)):
        kind = "constant" if std[c] == 0 else "near-constant"
        problems.append(f"channel {c} of '{name}' is {kind} on the training split (value ~{np.nanmean(finite[:, c]):.6g})")
    if windows is not None and len(windows) and np.ndim(windows) == 3 and windows.shape[1] > 1:
        ordered = np.sort(np.asarray(windows), axis=1)
        distinct = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)  # (N, C)
        share = float((distinct < min(MIN_DISTINCT, windows.shape[1])).mean())
        if share > MAX_DEGENERATE:
            problems.append(f"{share:.0%} of the training windows of '{name}' have a channel with fewer than "
                            f"{MIN_DISTINCT} distinct values (stuck or coarsely quantized data)")
    for problem in problems:
        warnings.warn(f"{problem}: the model cannot learn much from it; check the data source, drop the channel, "
                      "or ignore this if it is expected.", DataQualityWarning, stacklevel=3)
    return problems
