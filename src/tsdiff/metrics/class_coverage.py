"""Class coverage of unconditional samples: do generated windows cover every class of a labelled set?

L2D-Diff's claim is that a latent branch captures *multi-modal* distributions (all classes, in their
proportions) where single-space models collapse to the centre. We check it the usual way for generators
of labelled data: a classifier trained on the real training windows labels the samples, and the class
histogram of the samples is compared with the real one by the total variation distance
``TVD(p, q) = 1/2 sum_k |p_k - q_k|`` (0: same proportions; 1: disjoint). A class with no sample at all
shows as a zero in the histogram.

The classifier is a small 1-D CNN (two kernel-5 convolutions, global average + max pooling, a linear
layer), trained with Adam on cross-entropy from a fixed seed; its accuracy on held-out real windows is
reported so that a TVD can be read against the classifier's own error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ClassCNN", "class_coverage", "class_histogram", "predict_classes", "total_variation", "train_classifier"]


class ClassCNN(nn.Module):
    """``(B, L, C) -> (B, n_classes)`` logits."""

    def __init__(self, n_channels: int, n_classes: int, hidden: int = 32):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(n_channels, hidden, 5, padding=2), nn.ReLU(),
                                   nn.Conv1d(hidden, hidden, 5, padding=2), nn.ReLU())
        self.head = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.transpose(1, 2))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"{name} must be non-empty windows (N, length, channels), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN/inf values")
    return x


def train_classifier(x: np.ndarray, y: np.ndarray, n_classes: int, *, steps: int = 400, batch_size: int = 64,
                     lr: float = 3e-3, hidden: int = 32, seed: int = 0) -> ClassCNN:
    """A :class:`ClassCNN` fitted to windows ``x`` ``(N, L, C)`` with labels ``y`` in ``[0, n_classes)``."""
    x = _check(x, "x")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y must hold one label in [0, {n_classes}) per window; got shape {y.shape}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        clf = ClassCNN(x.shape[2], n_classes, hidden)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    clf.train()
    for _ in range(int(steps)):
        idx = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=gen)
        loss = nn.functional.cross_entropy(clf(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def predict_classes(clf: nn.Module, x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(_check(x, "x"))
    return torch.cat([clf(chunk).argmax(1) for chunk in xt.split(1024)]).numpy()


def class_histogram(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class frequencies (summing to 1) of integer ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``1/2 sum |p - q|`` of two histograms over the same classes."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms over different class sets: {p.shape} vs {q.shape}")
    return float(0.5 * np.abs(p - q).sum())


def class_coverage(train_x: np.ndarray, train_y: np.ndarray, candidates: dict[str, np.ndarray], n_classes: int, *,
                   held_out: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0, steps: int = 400) -> dict[str, Any]:
    """Train the classifier on ``(train_x, train_y)``, label every candidate set and compare its class
    histogram with the real training one. Returns ``{"real": hist, "classifier_accuracy": acc on
    held_out (or None), "sets": {name: {"histogram", "tvd", "classes_covered"}}}``."""
    clf = train_classifier(train_x, train_y, n_classes, seed=seed, steps=steps)
    real = class_histogram(train_y, n_classes)
    acc = None
    if held_out is not None and len(held_out[0]):
        acc = float((predict_classes(clf, held_out[0]) == np.asarray(held_out[1])).mean())
    sets = {}
    for name, x in candidates.items():
        hist = class_histogram(predict_classes(clf, x), n_classes)
        sets[name] = {"histogram": hist.round(4).tolist(), "tvd": total_variation(hist, real),
                      "classes_covered": int((hist > 0).sum())}
    return {"real": real.round(4).tolist(), "n_classes": n_classes, "classifier_accuracy": acc, "sets": sets}
