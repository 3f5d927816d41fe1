"""Input checks and conversions shared by every metric.

Convention for generation metrics: a *set* of windows is an array of shape ``(N, length, channels)``
(NumPy array or torch tensor, any float dtype). Real and generated sets must agree on ``length`` and
``channels``; their sizes ``N`` may differ unless a metric says otherwise.

The Diffusion-TS family (Yuan & Qiao, ICLR 2024, and K-ProtoDiff after it) computes its scores on data
min-max scaled to [0, 1] per channel; :func:`minmax_scale_like_diffusion_ts` reproduces that convention
with the *real* set's statistics so that both sets go through the same affine map.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch



def to_numpy(x, name: str = "input") -> np.ndarray:
    """``x`` as a float64 NumPy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be a NumPy array or torch tensor, got {type(x).__name__}") from exc
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}. Convert it with np.asarray(..., dtype=float).")
    return x.astype(np.float64, copy=False)


def check_set(x, name: str = "real", min_size: int = 1) -> np.ndarray:
    """Validate one set of windows ``(N, length, channels)`` and return it as float64 NumPy."""
    arr = to_numpy(x, name)
    if arr.ndim != 3:
        hint = (
            " A single multivariate series of shape (length, channels) needs a leading axis: x[None]."
            if arr.ndim == 2
            else " Reshape it to (num_windows, length, channels)."
        )
        raise ValueError(f"{name} must have shape (N, length, channels); got shape {tuple(arr.shape)}.{hint}")
    if arr.shape[0] < min_size:
        raise ValueError(f"{name} holds {arr.shape[0]} windows but this metric needs at least {min_size}.")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name} has an empty length or channel axis: shape {tuple(arr.shape)}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} NaN/inf values. Drop or impute those windows before evaluating "
            "(e.g. x = x[np.isfinite(x).all(axis=(1, 2))])."
        )
    return arr


def check_pair(real, fake, min_size: int = 1, same_size: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate a real and a generated set against each other."""
    r = check_set(real, "real", min_size)
    f = check_set(fake, "fake", min_size)
    if r.shape[1:] != f.shape[1:]:
        raise ValueError(
            f"real and fake windows differ: real is (N, length={r.shape[1]}, channels={r.shape[2]}), fake is "
            f"(N, length={f.shape[1]}, channels={f.shape[2]}). Generate windows of the real set's length and "
            "channel count (or crop both to a common shape) before comparing them."
        )
    if same_size and r.shape[0] != f.shape[0]:
        raise ValueError(
            f"this metric pairs windows by index and needs sets of equal size; got {r.shape[0]} real and "
            f"{f.shape[0]} fake windows. Subsample the larger set, e.g. fake[:len(real)]."
        )
    return r, f


def minmax_scale_like_diffusion_ts(real, fake, eps: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scale both sets with the REAL set's per-channel minimum and maximum.

    Diffusion-TS (Yuan & Qiao, ICLR 2024) and K-ProtoDiff evaluate on data in [0, 1] (scikit-learn's
    MinMaxScaler fitted per channel). Using only the real statistics keeps the map identical for both sets,
    so a generator that overshoots the real range is not hidden: its values simply fall outside [0, 1]
    (they are not clipped). A constant real channel is mapped with range ``eps`` to avoid a division by 0.
    """
    r, f = check_pair(real, fake)
    lo = r.min(axis=(0, 1), keepdims=True)
    hi = r.max(axis=(0, 1), keepdims=True)
    scale = np.maximum(hi - lo, eps)
    return (r - lo) / scale, (f - lo) / scale


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


@contextmanager
def seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for a block and restore them afterwards.

    Module initialisation and dropout draw from the global generator; forking it keeps a metric
    reproducible for a fixed ``seed`` without changing the caller's random state.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` intra-op threads and restore the previous count afterwards.

    ``None`` leaves torch's setting untouched (the default everywhere). The networks trained by the
    metrics are tiny, so one thread loses little on an idle machine; on a CPU shared with other busy
    processes, every parallel operation waits for a second thread to be scheduled, and one thread has
    measured up to ~50x faster.
    """
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(check_int(num_threads, "num_threads"))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
