"""Pictures of generated windows next to real ones.

Three views the generation papers show (Diffusion-TS, K-ProtoDiff, Crabbé et al. 2024):

* :func:`series_grid` -- a few generated series beside a few real ones, per channel;
* :func:`spectra_plot` -- the mean power spectrum of each set (the quantity frequency-domain diffusion
  is about: a time-domain model that misses high frequencies shows it here first), computed by
  :func:`tsdiff.metrics.statistics.mean_power_spectrum`, the same function the spectral distance uses;
* :func:`embedding_plot` -- a 2-D PCA of the flattened windows of every set, fitted on the real windows
  only (so the axes mean the same for every generated set). The papers also show t-SNE; PCA is
  deterministic, needs no extra dependency and shows mode dropping just as well on these sizes.

Inputs are ``(N, length, channels)`` arrays; sets are passed as ``{label: array}`` with the real set
named by ``real``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["pca_2d", "series_grid", "spectra_plot", "embedding_plot"]


def _plt():
    import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves

    return plt


def _check(sets: Mapping[str, np.ndarray], real: str) -> dict[str, np.ndarray]:
    if real not in sets:
        raise ValueError(f"the real set '{real}' is not among the sets {list(sets)}; pass real=<its label>")
    out = {}
    shape = None
    for name, x in sets.items():
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 3 or len(arr) == 0:
            raise ValueError(f"set '{name}' has shape {arr.shape}; expected a non-empty (N, length, channels) array")
        if shape is not None and arr.shape[1:] != shape:
            raise ValueError(f"set '{name}' has windows of shape {arr.shape[1:]}, the others {shape}; compare sets of one data set")
        shape = arr.shape[1:]
        out[name] = arr
    return out


def pca_2d(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """2-D coordinates of ``reference`` and ``others`` (each ``(N, ...)``, flattened) on the first two
    principal axes of ``reference`` (centred with its mean). Deterministic: each axis' sign is fixed so
    that its largest loading is positive."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = vt[:2]
    if len(axes) < 2:  # one window or one value per window: pad with a zero axis
        axes = np.vstack([axes, np.zeros((2 - len(axes), ref.shape[1]))])
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return [(np.asarray(x, dtype=np.float64).reshape(len(x), -1) - mean) @ axes.T for x in (reference, *others)]


def series_grid(sets: Mapping[str, np.ndarray], real: str = "real", n: int = 8, max_channels: int = 3, seed: int = 0):
    """One column per set, one row per channel (up to ``max_channels``): ``n`` series of each set, a seeded
    random pick (saved windows are in split order, so the first ones would all come from one period)."""
    data = _check(sets, real)
    sizes = {k: len(v) for k, v in data.items()}
    rng = np.random.default_rng(seed)
    data = {k: v[np.sort(rng.choice(len(v), size=min(n, len(v)), replace=False))] for k, v in data.items()}
    plt = _plt()
    n_ch = min(next(iter(data.values())).shape[-1], max_channels)
    fig, axes = plt.subplots(n_ch, len(data), figsize=(4.2 * len(data), 2.3 * n_ch), squeeze=False, sharey="row")
    for j, (name, arr) in enumerate(data.items()):
        for c in range(n_ch):
            axes[c, j].plot(arr[:n, :, c].T, alpha=0.7, lw=1)
            if j == 0:
                axes[c, j].set_ylabel(f"channel {c}")
        axes[0, j].set_title(f"{name} ({len(arr)} of {sizes[name]})")
    fig.tight_layout()
    return fig


def spectra_plot(sets: Mapping[str, np.ndarray], real: str = "real", max_channels: int = 3):
    """Mean power spectrum (log scale) of every set, one panel per channel; the real set in black."""
    from tsdiff.metrics.statistics import mean_power_spectrum

    data = _check(sets, real)
    plt = _plt()
    n_ch = min(next(iter(data.values())).shape[-1], max_channels)
    fig, axes = plt.subplots(1, n_ch, figsize=(4.2 * n_ch, 3.2), squeeze=False)
    for name, arr in data.items():
        spec = mean_power_spectrum(arr)  # (frequencies, channels)
        freqs = np.fft.rfftfreq(arr.shape[1])
        for c in range(n_ch):  # the zero frequency is left out: each window's mean is removed
            style = {"color": "black", "lw": 2} if name == real else {"lw": 1.3}
            axes[0, c].semilogy(freqs[1:], np.maximum(spec[1:, c], 1e-12), label=name, **style)
    for c in range(n_ch):
        axes[0, c].set_title(f"channel {c}")
        axes[0, c].set_xlabel("frequency (cycles / step)")
    axes[0, 0].set_ylabel("mean power")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def embedding_plot(sets: Mapping[str, np.ndarray], real: str = "real", max_points: int = 500, seed: int = 0):
    """Scatter of every set on the real set's first two principal axes (at most ``max_points`` per set,
    a seeded subset)."""
    data = _check(sets, real)
    rng = np.random.default_rng(seed)
    data = {k: v[np.sort(rng.choice(len(v), size=min(max_points, len(v)), replace=False))] for k, v in data.items()}
    names = [real, *[k for k in data if k != real]]
    coords = pca_2d(data[real], *[data[k] for k in names[1:]])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    for name, xy in zip(names, coords):
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.5, label=name, **({"color": "black"} if name == real else {}))
    ax.set_xlabel("PC 1 of the real windows")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    return fig
