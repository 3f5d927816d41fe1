"""Networks of L2D-Diff (latent-to-data cascaded diffusion, ICLR 2026) as plain ``nn.Module`` s.

Series are ``(batch, length, channels)`` (the paper writes ``x in R^{D x L}``); latents are ``(batch, d)``.

* :class:`MaskedAutoencoder` - ``E`` and ``D`` of Sec. "Masked pretraining": ``E`` is TS2Vec's dilated-CNN
  encoder (:class:`~tsdiff.nets.ts2vec.TS2VecEncoder`, its own weights, separate from the Context-FID
  encoders) with ``output_dims = d`` per step, max-pooled over time to ``r in R^d`` (TS2Vec's instance-level
  representation); ``D`` is an MLP ``d -> L x C`` (the paper does not describe its decoder). Masking zeroes
  the masked time steps after the input projection (TS2Vec's timestamp masking, the "obscured tokens").
* :func:`masked_mse` - ``||m * (x - D(E(x_masked)))||^2`` averaged over the masked entries only.
* :class:`ResidualMLPDenoiser` - ``r_phi(r_s, s)`` of the latent branch: residual MLP blocks with the step
  embedding added before each block (pre-LayerNorm), predicting ``r_0``.
* :class:`LatentConditionNet` - ``F``, the "5-layer CNN" projecting ``r`` to a guidance signal: a linear
  lift of ``r`` to ``hidden x L`` followed by five kernel-3 convolutions (GELU between them), giving
  ``(batch, L, cond_channels)``, one guidance vector per time step.
* :class:`ConditionalConvDenoiser` - ``x_theta(x_k, k, F(c))`` of the data branch: DiffWave-style gated
  residual blocks with growing dilations; the step embedding and the guidance signal enter every block.
"""

from __future__ import annotations

import torch
from torch import nn

from tsdiff.nets.embeddings import StepEmbedding
from tsdiff.nets.ts2vec import TS2VecEncoder

__all__ = ["ConditionalConvDenoiser", "LatentConditionNet", "MaskedAutoencoder", "ResidualMLPDenoiser", "masked_mse"]


def _positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def masked_mse(x: torch.Tensor, recon: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked time steps only: ``x``, ``recon`` ``(B, L, C)``, ``masked`` ``(B, L)``
    (True = masked). Unmasked positions do not enter the value or the gradient."""
    m = masked.to(x.dtype).unsqueeze(-1)
    count = m.sum() * x.shape[-1]
    return ((recon - x) ** 2 * m).sum() / count.clamp_min(1.0)


class MaskedAutoencoder(nn.Module):
    """``E``: ``(B, L, C) -> (B, d)`` and ``D``: ``(B, d) -> (B, L, C)``."""

    def __init__(self, n_channels: int, seq_len: int, latent_dim: int = 8, hidden: int = 64, depth: int = 4,
                 decoder_hidden: int = 256, seed: int = 0):
        super().__init__()
        _positive(n_channels=n_channels, seq_len=seq_len, latent_dim=latent_dim, hidden=hidden,
                  decoder_hidden=decoder_hidden)
        self.n_channels, self.seq_len, self.latent_dim = n_channels, seq_len, latent_dim
        self.encoder = TS2VecEncoder(n_channels, output_dims=latent_dim, hidden_dims=hidden, depth=depth, dropout=0.0,
                                     seed=seed)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, decoder_hidden), nn.GELU(),
                                     nn.Linear(decoder_hidden, decoder_hidden), nn.GELU(),
                                     nn.Linear(decoder_hidden, seq_len * n_channels))

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``r = E(x)``; ``keep`` ``(B, L)`` (True = visible) masks time steps."""
        return self.encoder(x, keep).amax(dim=1)

    def decode(self, r: torch.Tensor) -> torch.Tensor:
        return self.decoder(r).reshape(r.shape[0], self.seq_len, self.n_channels)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, keep))


class ResidualMLPDenoiser(nn.Module):
    """``(B, dim), (B,) steps -> (B, dim)``: input layer, ``n_blocks`` residual blocks
    ``h + MLP(LayerNorm(h) + p^s)``, output layer."""

    def __init__(self, dim: int, hidden: int = 256, n_blocks: int = 4, step_sinusoid_dim: int = 64):
        super().__init__()
        _positive(dim=dim, hidden=hidden, n_blocks=n_blocks)
        self.dim = dim
        self.inp = nn.Linear(dim, hidden)
        self.step = StepEmbedding(hidden, step_sinusoid_dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)) for _ in range(n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if r.ndim != 2 or r.shape[1] != self.dim:
            raise ValueError(f"latent input must be (batch, {self.dim}), got {tuple(r.shape)}")
        h, p = self.inp(r), self.step(s)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h) + p)
        return self.out(h)


class LatentConditionNet(nn.Module):
    """``F``: ``(B, d) -> (B, L, cond_channels)``, a linear lift then ``n_layers`` (5) convolutions."""

    def __init__(self, latent_dim: int, seq_len: int, cond_channels: int = 64, hidden: int = 64, n_layers: int = 5):
        super().__init__()
        _positive(latent_dim=latent_dim, seq_len=seq_len, cond_channels=cond_channels, hidden=hidden, n_layers=n_layers)
        self.seq_len, self.hidden, self.cond_channels = seq_len, hidden, cond_channels
        self.lift = nn.Linear(latent_dim, hidden * seq_len)
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Conv1d(hidden, cond_channels if i == n_layers - 1 else hidden, 3, padding=1))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.convs = nn.Sequential(*layers)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        h = self.lift(r).reshape(r.shape[0], self.hidden, self.seq_len)
        return self.convs(h).transpose(1, 2)


class _GatedBlock(nn.Module):
    def __init__(self, hidden: int, cond_channels: int, dilation: int):
        super().__init__()
        self.step = nn.Linear(hidden, hidden)
        self.conv = nn.Conv1d(hidden, 2 * hidden, 3, padding=dilation, dilation=dilation)
        self.cond = nn.Conv1d(cond_channels, 2 * hidden, 1)
        self.out = nn.Conv1d(hidden, 2 * hidden, 1)

    def forward(self, h: torch.Tensor, p: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(h + self.step(p).unsqueeze(-1)) + self.cond(c)
        a, b = y.chunk(2, dim=1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        return (h + res) / 2**0.5, skip


class ConditionalConvDenoiser(nn.Module):
    """``x_theta``: ``(B, L, C), (B,) steps, (B, L, cond_channels) -> (B, L, C)``."""

    def __init__(self, n_channels: int, seq_len: int, cond_channels: int = 64, hidden: int = 64, n_blocks: int = 6,
                 dilation_cycle: int = 4, step_sinusoid_dim: int = 64):
        super().__init__()
        _positive(n_channels=n_channels, seq_len=seq_len, cond_channels=cond_channels, hidden=hidden, n_blocks=n_blocks,
                  dilation_cycle=dilation_cycle)
        self.n_channels, self.seq_len, self.cond_channels = n_channels, seq_len, cond_channels
        self.inp = nn.Conv1d(n_channels, hidden, 1)
        self.step = StepEmbedding(hidden, step_sinusoid_dim, hidden)
        self.blocks = nn.ModuleList(_GatedBlock(hidden, cond_channels, 2 ** (i % dilation_cycle)) for i in range(n_blocks))
        self.out = nn.Sequential(nn.Conv1d(hidden, hidden, 1), nn.GELU(), nn.Conv1d(hidden, n_channels, 1))

    def forward(self, x: torch.Tensor, k: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.seq_len, self.n_channels):
            raise ValueError(f"x must be (batch, {self.seq_len}, {self.n_channels}), got {tuple(x.shape)}")
        h, p, cc = self.inp(x.transpose(1, 2)), self.step(k), c.transpose(1, 2)
        skips = 0.0
        for block in self.blocks:
            h, skip = block(h, p, cc)
            skips = skips + skip
        return self.out(skips / len(self.blocks) ** 0.5).transpose(1, 2)
