"""Generated heartbeats in the layout of the Kaggle heartbeat set (Kachuee et al. 2018, MIT-BIH beats).

That set cuts an ECG at each R peak, keeps ``1.2 x RR`` seconds at 125 Hz, min-max scales the beat to
[0, 1] and zero-pads it to 187 samples. Its real beats cannot ship with tsdiff (Kaggle, PhysioNet
licence), so this module draws beats of the same shape from a small waveform model, so that long,
zero-padded, multi-modal sequences can be trained and measured offline:

* the beat starts at an R peak (a narrow Gaussian of height 1) followed by an S dip;
* a T wave 0.2-0.4 s later (width and delay grow with RR, as the QT interval does);
* a P wave and a Q dip before the *next* R peak at ``t = RR``, of which the cut keeps the rising edge;
* baseline wander (a slow sinusoid) and white noise;
* three classes with different shapes: normal (``N``), premature ventricular (``V``: wide QRS, no P,
  inverted T, shorter RR) and supraventricular premature (``S``: short RR, flat or inverted P).

All randomness comes from ``numpy.random.default_rng(seed)``. The class of each beat is kept in
``BeatsDataModule.labels`` (order of the generated collection) for class-coverage studies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule

__all__ = ["BeatsDataModule", "make_beats", "BEAT_CLASSES"]

BEAT_CLASSES = ("N", "V", "S")
_FS = 125.0  # Hz, as the Kaggle set


def _bump(t: np.ndarray, centre: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    return height[:, None] * np.exp(-0.5 * ((t - centre[:, None]) / width[:, None]) ** 2)


def make_beats(
    n_samples: int,
    length: int = 187,
    class_weights: tuple[float, ...] = (0.6, 0.25, 0.15),
    noise_std: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, labels)``: ``x`` is ``(n_samples, length, 1)`` float32 in [0, 1] with trailing zero padding,
    ``labels`` the class index of each beat (into :data:`BEAT_CLASSES`)."""
    if n_samples < 1 or length < 16:
        raise ValueError(f"make_beats needs n_samples >= 1 and length >= 16, got {n_samples}, {length}")
    w = np.asarray(class_weights, dtype=np.float64)
    if w.shape != (len(BEAT_CLASSES),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class_weights must be {len(BEAT_CLASSES)} non-negative numbers, got {class_weights}")
    if noise_std < 0:
        raise ValueError(f"noise_std={noise_std} must be >= 0")
    rng = np.random.default_rng(seed)
    n = int(n_samples)
    labels = rng.choice(len(BEAT_CLASSES), size=n, p=w / w.sum())
    is_v, is_s = labels == 1, labels == 2
    u = lambda lo, hi: rng.uniform(lo, hi, size=n)  # noqa: E731
    rr = np.where(is_v | is_s, u(0.45, 0.75), u(0.7, 1.25))  # seconds to the next R peak
    keep = np.minimum(np.round(1.2 * rr * _FS).astype(int), length)  # samples kept before padding
    t = np.arange(length, dtype=np.float64)[None, :] / _FS
    qrs_w = np.where(is_v, u(0.025, 0.04), u(0.008, 0.014))
    x = _bump(t, np.zeros(n), qrs_w, np.ones(n))  # R peak at the cut
    x += _bump(t, 2.5 * qrs_w + 0.01, qrs_w, np.where(is_v, u(-0.5, -0.3), u(-0.3, -0.1)))  # S dip
    qt = 0.38 * np.sqrt(rr) * u(0.9, 1.1)
    x += _bump(t, qt - 0.06, u(0.035, 0.06) * np.where(is_v, 1.6, 1.0), np.where(is_v, u(-0.45, -0.25), u(0.2, 0.4)))
    p_height = np.where(is_v, 0.0, np.where(is_s, u(-0.1, 0.05), u(0.08, 0.15)))
    x += _bump(t, rr - u(0.14, 0.2), u(0.02, 0.03), p_height)  # P wave of the next beat
    x += _bump(t, rr - 0.03, np.full(n, 0.01), u(-0.15, -0.05))  # its Q dip
    x += _bump(t, rr, qrs_w, u(0.85, 1.05))  # its R peak (rising edge kept by the 1.2 RR cut)
    x += u(0.02, 0.08)[:, None] * np.sin(2 * np.pi * u(0.15, 0.4)[:, None] * t + u(0, 2 * np.pi)[:, None])
    x += noise_std * rng.standard_normal(x.shape)
    mask = np.arange(length)[None, :] < keep[:, None]
    lo = np.where(mask, x, np.inf).min(axis=1, keepdims=True)
    hi = np.where(mask, x, -np.inf).max(axis=1, keepdims=True)
    x = np.where(mask, (x - lo) / (hi - lo), 0.0)
    return x[..., None].astype(np.float32), labels.astype(np.int64)


class BeatsDataModule(TimeSeriesDataModule):
    """``datamodule=beats``: generated, zero-padded heartbeats of length 187 (see module docstring).

    Extra args: ``n_samples`` (beats, split at random into train/val/test), ``class_weights``,
    ``noise_std``. Standardization is off by default, as the Kaggle beats are used in [0, 1].
    """

    dataset_name = "beats"
    layout = "collection"
    default_seq_len = 187

    def __init__(
        self,
        data_dir: str = "data/beats",
        n_samples: int = 600,
        class_weights: tuple[float, ...] = (0.6, 0.25, 0.15),
        noise_std: float = 0.01,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("standardize", False)
        super().__init__(data_dir=data_dir, **kwargs)
        self.n_samples = int(n_samples)
        self.class_weights = tuple(float(v) for v in class_weights)
        self.noise_std = float(noise_std)
        make_beats(1, max(self._seq_len, 16), self.class_weights, self.noise_std, 0)  # validate now
        if self.n_samples < 3:
            raise ValueError(f"n_samples={n_samples} must be >= 3 (train, val and test)")
        self.labels: np.ndarray | None = None

    def load_collection(self) -> tuple[np.ndarray, None]:
        x, self.labels = make_beats(self.n_samples, self._seq_len, self.class_weights, self.noise_std, self.seed)
        self.channel_names = ["ecg"]
        return x, None
