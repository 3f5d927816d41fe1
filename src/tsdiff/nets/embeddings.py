"""Diffusion time/step embeddings shared by tsdiff's networks (plain ``nn.Module`` s, no Lightning).

* :func:`sinusoidal_table` - the transformer's sinusoidal features of a step index (DiffWave / CSDI).
* :class:`StepEmbedding` - TimeDiff's step embedding ``p^k`` (Shen & Kwok 2023, eq. 17): the table, then
  two FC layers with SiLU. Used by :class:`tsdiff.nets.timediff.TimeDiffDenoiser`.
* :class:`GaussianFourierTimeEncoding` - random Fourier features of a continuous time ``t`` (Tancik et al.
  2020; Song et al. 2021's score networks), then an MLP. Used by the score networks
  (:mod:`tsdiff.nets.score_nets`).

Every module maps a ``(batch,)`` tensor of times/steps to ``(batch, dim)`` features.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoidal_table", "StepEmbedding", "GaussianFourierTimeEncoding"]


def sinusoidal_table(k: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``[sin(f_j k), cos(f_j k)]_j``: ``k`` ``(batch,)``, ``freqs`` ``(w,)`` -> ``(batch, 2w)``."""
    angles = k.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class StepEmbedding(nn.Module):
    """Diffusion-step embedding ``p^k`` (TimeDiff eq. 17).

    ``k_embedding = [sin(10^{4 j/(w-1)} k), cos(10^{4 j/(w-1)} k)]_{j=0..w-1}`` (the transformer's
    sinusoidal table as in DiffWave/CSDI, with ``w = sinusoid_dim / 2``), then two FC layers with
    SiLU: ``p^k = SiLU(FC(SiLU(FC(k_embedding))))``. The paper gives the FC width as 128 and needs
    ``p^k`` in ``R^{d'}`` (it is concatenated with ``z_1^k`` into ``2d' x H``), so the first FC maps to
    ``hidden_dim`` (128) and the second to ``out_dim`` (= ``d'``).

    ``k`` is the schedule's integer step index (float tensor ``(batch,)``).
    """

    def __init__(self, out_dim: int, sinusoid_dim: int = 128, hidden_dim: int = 128):
        super().__init__()
        for name, value in (("out_dim", out_dim), ("sinusoid_dim", sinusoid_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sinusoid_dim % 2 or sinusoid_dim < 4:
            raise ValueError(f"sinusoid_dim must be even and >= 4, got {sinusoid_dim}")
        w = sinusoid_dim // 2
        freqs = 10.0 ** (4.0 * torch.arange(w, dtype=torch.float64) / (w - 1))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim), nn.SiLU())

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """``k``: ``(batch,)`` step indices -> ``(batch, out_dim)``."""
        return self.mlp(sinusoidal_table(k, self.freqs))


class GaussianFourierTimeEncoding(nn.Module):
    """``t -> MLP([sin(2 pi W t), cos(2 pi W t)])`` with fixed random ``W ~ N(0, scale^2)``.

    ``W`` is drawn from a fixed seed so that a network built twice from the same config has the same
    buffers even before loading a checkpoint (and ``W`` is saved in the state dict anyway).
    """

    def __init__(self, d_model: int, num_features: int = 32, scale: float = 16.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(num_features, generator=gen) * scale)
        self.mlp = nn.Sequential(nn.Linear(2 * num_features, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * t.float()[:, None] * self.W[None, :]  # (kept as the score nets always computed it)
        return self.mlp(torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1))
