"""Fréchet distance and Context-FID.

The Fréchet distance between Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` is
``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})`` (Fréchet, 1957; Dowson & Landau, 1982);
Heusel et al. (NeurIPS 2017) made it the FID by fitting the Gaussians to network embeddings.
Context-FID (Jeha et al., PSA-GAN, ICLR 2022; used by Diffusion-TS, K-ProtoDiff and L2D-Diff) takes the
embeddings from a TS2Vec encoder trained on the real windows (see :mod:`tsdiff.metrics.ts2vec`).
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import check_int, check_pair, seeded_torch
from .ts2vec import default_ts2vec_iterations, encode_full_series, train_ts2vec


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    # torch's eigh follows torch's thread setting (NumPy's BLAS threads would ignore it).
    w, v = torch.linalg.eigh(torch.as_tensor((s + s.T) / 2, dtype=torch.float64))
    return ((v * w.clamp_min(0).sqrt()) @ v.T).numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Closed-form Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` is computed from the eigenvalues of the symmetric PSD matrix
    ``S1^{1/2} S2 S1^{1/2}``, which avoids the complex round-off of a general matrix square root.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, float)), np.atleast_2d(np.asarray(sigma2, float))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent shapes: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    eig = torch.linalg.eigvalsh(torch.as_tensor((m + m.T) / 2, dtype=torch.float64)).clamp_min(0).numpy()
    val = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.sum(np.sqrt(eig)))
    return max(val, 0.0)


def frechet_distance_from_embeddings(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets ``(N, D)`` (unbiased covariance)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"embeddings must be (N>=2, D) with equal D; got {a.shape} and {b.shape}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def context_fid_runs(
    real,
    fake,
    seeds: list[int],
    iterations: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Context-FID for several seeds at once (one encoder per seed, trained side by side); see :func:`context_fid`."""
    return context_fid_many(real, [fake], seeds, iterations, batch_size, device)[0]


def context_fid_many(
    real,
    fakes: list,
    seeds: list[int],
    iterations: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    reference_size: int | None = None,
) -> list[list[float]]:
    """Context-FID of several generated sets against one real set; returns ``[set][seed]``.

    The encoder of seed ``s`` is trained once on the real windows and embeds the real set and every
    generated set, so the sets are compared through the same feature map (and the training cost is paid
    once). Each generated set is cut to ``fake[:N_real]`` as Diffusion-TS does. ``reference_size`` caps the
    number of real windows whose embeddings estimate the real Gaussian (a seeded subset; the encoder still
    trains on all of them): embedding costs as much as training on large sets, and the Fréchet distance's
    sampling error is dominated by the smaller, generated set. ``None`` (default) embeds every real window.
    """
    if len(fakes) == 0:
        raise ValueError("fakes must hold at least one generated set.")
    pairs = [check_pair(real, f, min_size=2) for f in fakes]
    r = pairs[0][0]
    fs = [p[1][: r.shape[0]] for p in pairs]  # Diffusion-TS: fake[:N_real]
    if len(seeds) == 0:
        raise ValueError("seeds must name at least one seed.")
    dev = torch.device(device)
    iters = default_ts2vec_iterations(r.size) if iterations is None else check_int(iterations, "iterations")
    rt = torch.as_tensor(r, dtype=torch.float32, device=dev)
    ref = rt
    if reference_size is not None and check_int(reference_size, "reference_size", 2) < r.shape[0]:
        pick = np.sort(np.random.default_rng(int(seeds[0])).choice(r.shape[0], int(reference_size), replace=False))
        ref = rt[torch.as_tensor(pick, device=dev)]
    with seeded_torch(int(seeds[0]), dev):
        model = train_ts2vec(rt, iters, [int(s) for s in seeds], batch_size=batch_size)
        er = encode_full_series(model, ref).double().cpu().numpy()
        efs = [encode_full_series(model, torch.as_tensor(f, dtype=torch.float32, device=dev)).double().cpu().numpy()
               for f in fs]
    return [[frechet_distance_from_embeddings(er[i], ef[i]) for i in range(len(seeds))] for ef in efs]


def context_fid(
    real,
    fake,
    seed: int = 0,
    iterations: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> float:
    """Context-FID between real and generated windows ``(N, L, C)``; 0 is best.

    A TS2Vec encoder is trained on the REAL windows only (``iterations`` defaults to TS2Vec's 200/600 rule,
    :func:`~tsdiff.metrics.ts2vec.default_ts2vec_iterations`), both sets are embedded (max-pool over
    time, 320-d) and the Fréchet distance between Gaussians fitted to the two embedding sets is returned.
    As in Diffusion-TS (and K-ProtoDiff's script) the generated set is cut to ``fake[:N_real]`` first.
    Diffusion-TS retrains the encoder for every repetition, so repeated runs include the encoder's
    variance; :func:`context_fid_runs` does that for several seeds in one pass.
    """
    return context_fid_runs(real, fake, [seed], iterations, batch_size, device)[0]
