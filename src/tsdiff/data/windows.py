"""Windows and per-channel scaling, the pieces every datamodule shares (no Lightning here).

Two scalings, both fitted on the training split only and both one per-channel affine map, so one
:class:`Scaler` class serves them:

* ``standard``: ``(x - mean) / std`` (tsdiff's default);
* ``minmax``: the training range mapped to ``[-1, 1]`` (Diffusion-TS / K-ProtoDiff convention; their
  evaluation then min-max scales both sets to ``[0, 1]`` again, see :mod:`tsdiff.metrics.protocol`).
  Written as ``(x - mid) / half_range``, i.e. a Scaler with ``mean = mid`` and ``std = half_range``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SCALINGS", "Scaler", "WindowDataset", "sliding_windows"]

SCALINGS = ("standard", "minmax", "none")


class Scaler:
    """Per-channel affine map ``(x - mean) / std``, fitted on training data (standard or min-max).

    Works on numpy arrays and torch tensors of any shape whose last axis is the channel axis.
    A channel with (near) zero spread on the training split gets ``std = 1`` so it is only centred
    instead of blowing up.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Scaler: mean {self.mean.shape} and std {self.std.shape} must have the same shape")

    @classmethod
    def fit(cls, values: np.ndarray, eps: float = 1e-8) -> "Scaler":
        """Fit on ``values`` of shape (..., channels), pooling every axis but the last."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
        mean = flat.mean(axis=0)
        std = flat.std(axis=0)
        std = np.where(std < eps, 1.0, std)
        return cls(mean, std)

    @classmethod
    def fit_minmax(cls, values: np.ndarray, eps: float = 1e-8) -> "Scaler":
        """Map each channel's training range to ``[-1, 1]``; a constant channel is only centred."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        half = (hi - lo) / 2.0
        return cls((hi + lo) / 2.0, np.where(half < eps, 1.0, half))

    @classmethod
    def fit_kind(cls, values: np.ndarray, kind: str) -> "Scaler":
        """``kind`` in :data:`SCALINGS`."""
        if kind == "standard":
            return cls.fit(values)
        if kind == "minmax":
            return cls.fit_minmax(values)
        if kind == "none":
            return cls.identity(values.shape[-1])
        raise ValueError(f"scaling='{kind}' is not supported; use one of {', '.join(SCALINGS)}")

    @classmethod
    def identity(cls, n_channels: int) -> "Scaler":
        return cls(np.zeros(n_channels), np.ones(n_channels))

    def _params_like(self, x):
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.std, dtype=x.dtype, device=x.device))
        return self.mean, self.std

    def _check(self, x) -> None:
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(
                f"Scaler: input has {x.shape[-1]} channels on its last axis, the scaler was fitted on "
                f"{self.mean.shape[0]}; pass arrays shaped (..., length, channels)"
            )

    def transform(self, x):
        self._check(x)
        mean, std = self._params_like(x)
        return (x - mean) / std

    def inverse_transform(self, x):
        """Back to original units; ``x`` is a numpy array or a tensor shaped (..., channels)."""
        self._check(x)
        mean, std = self._params_like(x)
        return x * std + mean

    def __repr__(self) -> str:
        return f"Scaler(mean={self.mean.tolist()}, std={self.std.tolist()})"


class WindowDataset(Dataset):
    """Windows (N, seq_len, channels) served as ``{"x": window}`` dicts."""

    def __init__(self, windows: np.ndarray) -> None:
        self.windows = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.windows[index]}


def sliding_windows(series: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
    """All windows ``series[s : s + seq_len]`` for ``s = 0, stride, 2*stride, ...`` (a copy).

    ``series`` is (length, channels); the result is (n_windows, seq_len, channels). The last window
    ends at or before the end of the series (windows are never padded).
    """
    length = series.shape[0]
    if length < seq_len:
        return np.empty((0, seq_len, series.shape[1]), dtype=np.float32)
    starts = np.arange(0, length - seq_len + 1, stride)
    view = np.lib.stride_tricks.sliding_window_view(series, seq_len, axis=0)  # (L-s+1, C, s)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1), dtype=np.float32)
