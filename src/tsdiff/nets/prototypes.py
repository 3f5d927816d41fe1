"""The Key Prototypes Learner (KPL) of K-ProtoDiff (AAAI 2026, Fig. 1 top left), built from what the paper
means: a bank of representative temporal patterns learned from clean training windows with an explicit
self-supervised objective (the authors' public code has none).

Shapes are ``(batch, length, channels)``.

* **Bands** (real FFT): a window is split into frequency bands by masking its real-FFT bins
  (``band_edges`` are fractions of the Nyquist frequency; ``[0.25]`` gives a low band -- level and trend --
  and a high band -- local shapes). The bands sum back to the window exactly (no mirrored bins).
* **Scales**: each band is cut into ``segments`` non-overlapping snippets (1 = the whole window, 4 =
  quarters); every (band, scale) pair has its own bank of ``n_prototypes`` snippets ``(s, C)``.
* **Channels**: a prototype spans all channels of a snippet (the default), or, with ``channelwise``, one
  channel: univariate shapes that every channel's snippets are assigned to on their own (a 28-channel energy
  window then has 28 codes per band instead of one).
* **Adaptive assignment** (gain-shape): a snippet ``z`` minus its per-channel mean is matched to the unit-norm
  prototypes ``p_k`` by ``cos^2(z, p_k)``; the soft assignment is ``a = softmax(cos^2 / temperature)`` and the
  gain ``g_k = <z, p_k>``, so a prototype is a *shape* that windows reuse at their own level and amplitude.
* **Reconstruction**: ``z_hat = mean + sum_k a_k g_k p_k``, snippets concatenated, bands summed: one
  reconstruction of the window per scale.
* **Objective** (:meth:`KeyPrototypes.loss`): unexplained variance of the reconstruction (per scale, relative
  to the window's own variance) + ``freq_weight`` x the relative L1 gap of real-FFT magnitudes + ``balance``
  x KL(mean usage || uniform) + ``diversity`` x mean squared cosine between prototypes of a bank +
  ``sharpness`` x the mean assignment entropy (normalised by ``log K``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import nn

__all__ = ["KeyPrototypes", "band_masks"]


def band_masks(length: int, band_edges: list[float] | tuple[float, ...]) -> torch.Tensor:
    """``(n_bands, length // 2 + 1)`` 0/1 masks of the real-FFT bins; bin ``f`` lies in the band whose
    edges (fractions of the Nyquist bin) bracket ``f / (length // 2)``. The DC bin is in the lowest band."""
    edges = [float(e) for e in band_edges]
    if any(not 0.0 < e < 1.0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError(f"band_edges must be increasing fractions of the Nyquist frequency in (0, 1), got {band_edges}")
    n_bins = length // 2 + 1
    pos = torch.arange(n_bins, dtype=torch.float64) / max(length // 2, 1)
    bounds = [-1.0, *edges, 2.0]
    return torch.stack([((pos > lo) & (pos <= hi)).float() for lo, hi in zip(bounds[:-1], bounds[1:])])


class KeyPrototypes(nn.Module):
    """Multi-scale, band-aware prototype banks with soft gain-shape assignment (see the module docstring).

    Args:
        n_channels, seq_len: the window shape.
        n_prototypes: prototypes per (band, scale) bank.
        segments: snippets per window for each scale; each must divide ``seq_len``.
        band_edges: band boundaries as fractions of the Nyquist frequency (``[]``: one band).
        temperature: of the soft assignment over ``cos^2`` (smaller = harder).
        channelwise: univariate prototypes assigned per channel (see the module docstring).
        freq_weight, balance, diversity, sharpness: weights of the objective's terms.
        seed: initialisation of the prototypes (random normal; :meth:`init_from` replaces it with snippets).
    """

    def __init__(self, n_channels: int, seq_len: int, n_prototypes: int = 16, segments: list[int] | tuple[int, ...] = (1, 2, 4),
                 band_edges: list[float] | tuple[float, ...] = (0.25,), temperature: float = 0.05, freq_weight: float = 0.1,
                 balance: float = 0.1, diversity: float = 0.1, sharpness: float = 0.01, channelwise: bool = False, seed: int = 0):
        super().__init__()
        segments = [int(s) for s in segments]
        if n_prototypes < 1 or not segments:
            raise ValueError(f"KeyPrototypes needs n_prototypes >= 1 and at least one scale, got {n_prototypes}, {segments}")
        bad = [s for s in segments if s < 1 or seq_len % s]
        if bad:
            raise ValueError(f"KeyPrototypes segments {bad} do not divide seq_len={seq_len}; choose divisors (e.g. 1, 2, 4)")
        if temperature <= 0:
            raise ValueError(f"KeyPrototypes temperature must be > 0, got {temperature}")
        self.n_channels, self.seq_len, self.n_prototypes = int(n_channels), int(seq_len), int(n_prototypes)
        if channelwise not in (True, False):
            raise ValueError(f"KeyPrototypes channelwise must be true or false, got {channelwise!r}")
        self.channelwise = bool(channelwise)
        proto_channels = 1 if self.channelwise else self.n_channels
        self.segments = segments
        self.register_buffer("masks", band_masks(seq_len, list(band_edges)), persistent=False)
        self.temperature = float(temperature)
        self.weights = {"freq": float(freq_weight), "balance": float(balance), "diversity": float(diversity),
                        "sharpness": float(sharpness)}
        gen = torch.Generator().manual_seed(int(seed))
        self.banks = nn.ParameterList(
            nn.Parameter(torch.randn(n_prototypes, seq_len // s, proto_channels, generator=gen))
            for _ in range(self.n_bands) for s in segments)

    @property
    def n_bands(self) -> int:
        return int(self.masks.shape[0])

    def bank(self, band: int, scale: int) -> nn.Parameter:
        return self.banks[band * len(self.segments) + scale]

    def unit_prototypes(self, band: int, scale: int) -> torch.Tensor:
        """``(K, s * C)`` unit-norm prototypes of one bank."""
        return nnf.normalize(self.bank(band, scale).flatten(1), dim=1)

    def bands(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_bands, B, L, C)`` band parts of ``x``; they sum to ``x``."""
        spec = torch.fft.rfft(x, dim=1)
        return torch.stack([torch.fft.irfft(spec * m.view(1, -1, 1), n=x.shape[1], dim=1) for m in self.masks.to(x.dtype)])

    def _snippets(self, xb: torch.Tensor, n_seg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-removed snippets ``(B, n_seg, s * C)`` (channel-wise: ``(B, n_seg * C, s)``, snippet-major) and
        their per-channel means ``(B, n_seg, 1, C)``."""
        z = xb.reshape(xb.shape[0], n_seg, xb.shape[1] // n_seg, xb.shape[2])
        mean = z.mean(dim=2, keepdim=True)
        z = z - mean
        if self.channelwise:
            return z.transpose(2, 3).reshape(z.shape[0], -1, z.shape[2]), mean
        return z.flatten(2), mean

    def _unsnippet(self, rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_snippets`: ``(B, n_seg, s, C)`` from snippet rows and means."""
        b, n_seg, _, c = mean.shape
        if self.channelwise:
            return rows.view(b, n_seg, c, -1).transpose(2, 3) + mean
        return rows.view(b, n_seg, -1, c) + mean

    def assign(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """For every bank: assignments ``a`` ``(B, n_seg, K)``, gains ``g``, and the band part's reconstruction."""
        self._check(x)
        out = []
        for b, xb in enumerate(self.bands(x)):
            for j, n_seg in enumerate(self.segments):
                shape, mean = self._snippets(xb, n_seg)
                p = self.unit_prototypes(b, j)
                gain = shape @ p.T                                                   # (B, n_seg, K)
                energy = shape.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)
                a = torch.softmax(gain.pow(2) / energy / self.temperature, dim=-1)
                recon = self._unsnippet((a * gain) @ p, mean)                       # (B, n_seg, s, C)
                out.append({"band": b, "scale": j, "a": a, "gain": gain, "recon": recon.reshape(x.shape)})
        return out

    @torch.no_grad()
    def codes(self, x: torch.Tensor, scales: int | list[int] | tuple[int, ...]) -> torch.Tensor:
        """``(B, P)`` hard assignments (prototype indices) of the snippets of ``x`` at the scale indices
        ``scales``: the discrete prototype code of each window. Order: band-major, then the listed scales,
        then the snippets in time (:meth:`code_layout`). A single whole-window scale gives one index per band."""
        scales = [int(scales)] if isinstance(scales, int) else [int(j) for j in scales]
        bad = [j for j in scales if not 0 <= j < len(self.segments)]
        if bad or not scales:
            raise ValueError(f"KeyPrototypes.codes: scale indices {scales} must lie in [0, {len(self.segments)})")
        parts = {(p["band"], p["scale"]): p["a"] for p in self.assign(x)}
        return torch.cat([parts[(b, j)].argmax(-1) for b in range(self.n_bands) for j in scales], dim=1)

    def code_layout(self, scales: list[int] | tuple[int, ...]) -> list[tuple[int, int, int, int]]:
        """``(bank, snippet, offset, channel)`` of every position of :meth:`codes` ``(x, scales)``: the bank
        index into :meth:`tokens` (``band * n_scales + scale``), the snippet's index in time, its first time
        step, and its channel (-1: all channels, the joint prototypes)."""
        layout = []
        channels = range(self.n_channels) if self.channelwise else [-1]
        for b in range(self.n_bands):
            for j in scales:
                s = self.seq_len // self.segments[j]
                layout += [(b * len(self.segments) + j, i, i * s, c) for i in range(self.segments[j]) for c in channels]
        return layout

    def token_placement(self, scales: list[int] | tuple[int, ...]) -> torch.Tensor:
        """``(P, L * C)`` gather index that writes each code position's prototype (a row of :meth:`tokens`,
        padded with one zero at the end) at its own time steps and channels of a flattened ``(L, C)`` window;
        every other entry points at the zero."""
        zero = self.token_dim - self.n_bands * len(self.segments)          # the padded rows' zero entry
        layout = self.code_layout(scales)
        index = torch.full((len(layout), self.seq_len * self.n_channels), zero, dtype=torch.long)
        for p, (bank, _, off, ch) in enumerate(layout):
            s = self.seq_len // self.segments[bank % len(self.segments)]
            for tau in range(s):
                for c in ([ch] if ch >= 0 else range(self.n_channels)):
                    source = tau if ch >= 0 else tau * self.n_channels + c      # the row is (s,) or (s, C) flattened
                    index[p, (off + tau) * self.n_channels + c] = source
        return index

    @property
    def placed_token_dim(self) -> int:
        """Width of a placed token: the flattened window ``L * C`` plus the bank one-hot."""
        return self.seq_len * self.n_channels + self.n_bands * len(self.segments)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_scales, B, L, C)``: the window rebuilt from its assigned prototypes at each scale."""
        parts = self.assign(x)
        return torch.stack([sum(p["recon"] for p in parts if p["scale"] == j) for j in range(len(self.segments))])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The prototype reconstruction averaged over scales: the point R-Sampling pulls an estimate toward."""
        return self.reconstruct(x).mean(dim=0)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The self-supervised objective on clean windows ``x`` and its terms (all scalars)."""
        parts = self.assign(x)
        recons = torch.stack([sum(p["recon"] for p in parts if p["scale"] == j) for j in range(len(self.segments))])
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).sum(dim=(1, 2)).clamp_min(1e-8)
        recon = ((recons - x).pow(2).sum(dim=(2, 3)) / var).mean()
        mag_x = torch.fft.rfft(x, dim=1).abs()
        freq = ((torch.fft.rfft(recons, dim=2).abs() - mag_x).abs().mean() / mag_x.mean().clamp_min(1e-8))
        balance = diversity = sharpness = x.new_zeros(())
        log_k = math.log(self.n_prototypes) if self.n_prototypes > 1 else 1.0
        for p in parts:
            usage = p["a"].mean(dim=(0, 1))
            balance = balance + (usage * (usage.clamp_min(1e-8) * self.n_prototypes).log()).sum()
            sharpness = sharpness - (p["a"] * p["a"].clamp_min(1e-8).log()).sum(-1).mean() / log_k
            if self.n_prototypes > 1:
                u = self.unit_prototypes(p["band"], p["scale"])
                cos = u @ u.T
                off = cos - torch.diag(torch.diag(cos))
                diversity = diversity + off.pow(2).sum() / (self.n_prototypes * (self.n_prototypes - 1))
        n = len(parts)
        terms = {"recon": recon, "freq": freq, "balance": balance / n, "diversity": diversity / n, "sharpness": sharpness / n}
        terms["total"] = recon + sum(self.weights[k] * terms[k] for k in self.weights)
        return terms

    @torch.no_grad()
    def init_from(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start every bank at mean-removed snippets of randomly chosen training windows (seeded)."""
        self._check(windows)
        for b, xb in enumerate(self.bands(windows)):
            for j, n_seg in enumerate(self.segments):
                shape, _ = self._snippets(xb, n_seg)
                flat = shape.reshape(-1, shape.shape[-1])
                idx = torch.randperm(len(flat), generator=generator)[: self.n_prototypes]
                chosen = flat[idx]
                if len(chosen) < self.n_prototypes:  # fewer snippets than prototypes: keep the rest random
                    chosen = torch.cat([chosen, self.bank(b, j).flatten(1)[len(chosen):]])
                self.bank(b, j).copy_(chosen.view_as(self.bank(b, j)))

    def tokens(self) -> torch.Tensor:
        """``(n_banks * K, max_s * C)``: every unit prototype, zero-padded to the longest snippet (what a
        denoiser's context embedding reads), followed by the bank's one-hot (band, scale)."""
        rows = []
        width = (self.seq_len // min(self.segments)) * (1 if self.channelwise else self.n_channels)
        n_banks = self.n_bands * len(self.segments)
        for b in range(self.n_bands):
            for j in range(len(self.segments)):
                u = self.unit_prototypes(b, j)
                onehot = u.new_zeros(len(u), n_banks)
                onehot[:, b * len(self.segments) + j] = 1.0
                rows.append(torch.cat([nnf.pad(u, (0, width - u.shape[1])), onehot], dim=1))
        return torch.cat(rows)

    @property
    def token_dim(self) -> int:
        return (self.seq_len // min(self.segments)) * (1 if self.channelwise else self.n_channels) + self.n_bands * len(self.segments)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.seq_len, self.n_channels):
            raise ValueError(f"KeyPrototypes expects windows (B, {self.seq_len}, {self.n_channels}), got {tuple(x.shape)}")
