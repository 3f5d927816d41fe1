"""A Diffusion-TS-style interpretable denoiser (Yuan & Qiao, "Diffusion-TS: Interpretable Diffusion for
General Time Series Generation", ICLR 2024, Sec. 3.2 and Fig. 1), written from the paper.

Shapes are ``(batch, length, channels)``. The network predicts ``x0`` from ``x_t`` and the step ``k``:

* **Embedding**: a Conv1d (kernel 3) over time maps ``C`` channels to ``d_model``, plus a learned position
  embedding; the step ``k`` is a sinusoidal table followed by an MLP (the conditioning vector of AdaLN).
* **Encoder**: transformer blocks whose LayerNorms are adaptive (AdaLN: scale and shift from the step
  embedding, zero-initialised so every block starts as the identity).
* **Decoder**: AdaLN blocks with self-attention and cross-attention to the encoder output; every block
  emits an interpretable part of ``x0`` from its hidden state:
  a **trend**: a polynomial of low order in ``t / L`` whose coefficients come from the block's time-pooled
  state (Diffusion-TS eq. 5), and a **season**: the ``top_k`` strongest real-FFT components of a projection
  of the state, transformed back (eq. 6-7; the real FFT keeps each frequency once, no mirrored bins).
  ``x0_hat = sum trend + sum season + residual``, the residual a linear read-out of the last state.
* **Context** (optional): ``context`` tokens ``(B or 1, P, context_dim)`` -- K-ProtoDiff's per-sample
  prototype tokens -- are projected to ``d_model`` and appended to the decoder's cross-attention memory,
  and (a per-token MLP, summed over tokens, last layer zero-initialised) added to the AdaLN conditioning
  vector of every block, like a class label. The noisy input keeps its own path (embedding -> encoder ->
  decoder): context is added, never substituted (the authors' rebuild replaces ``x_t`` by prototype
  features, which cannot denoise).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tsdiff.nets.embeddings import sinusoidal_table

__all__ = ["DiffusionTSNet", "AdaLayerNorm", "polynomial_basis", "top_k_season"]


def polynomial_basis(length: int, order: int) -> torch.Tensor:
    """``(length, order + 1)`` powers of ``t / length`` (Diffusion-TS's trend basis, eq. 5)."""
    t = torch.arange(length, dtype=torch.float64) / length
    return torch.stack([t**p for p in range(order + 1)], dim=1).float()


def top_k_season(h: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest-magnitude non-constant real-FFT bins of ``h`` ``(B, L, D)`` per sample and
    feature and transform back (the seasonal part of eq. 6-7). The DC bin belongs to the trend."""
    length = h.shape[1]
    spec = torch.fft.rfft(h, dim=1)
    n_bins = spec.shape[1] - 1
    if n_bins < 1:
        return torch.zeros_like(h)
    k = min(k, n_bins)
    idx = spec[:, 1:].abs().topk(k, dim=1).indices + 1
    mask = torch.zeros(spec.shape, dtype=h.dtype, device=h.device).scatter_(1, idx, 1.0)
    return torch.fft.irfft(spec * mask, n=length, dim=1)


class AdaLayerNorm(nn.Module):
    """``LN(h) * (1 + scale(c)) + shift(c)`` with ``(scale, shift)`` a zero-initialised linear map of ``c``."""

    def __init__(self, d_model: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.proj = nn.Linear(cond_dim, 2 * d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(c).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(h) * (1 + scale) + shift


def _mlp(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim_feedforward, d_model))


class _EncoderBlock(nn.Module):
    def __init__(self, d_model, num_heads, dim_feedforward, dropout):
        super().__init__()
        self.ln1, self.ln2 = AdaLayerNorm(d_model, d_model), AdaLayerNorm(d_model, d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.mlp = _mlp(d_model, dim_feedforward, dropout)

    def forward(self, h, c):
        a = self.ln1(h, c)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.mlp(self.ln2(h, c))


class _DecoderBlock(nn.Module):
    """Self-attention, cross-attention to ``memory``, MLP; then its trend and season parts of ``x0``."""

    def __init__(self, d_model, num_heads, dim_feedforward, dropout, n_channels, trend_order, top_k, basis):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (AdaLayerNorm(d_model, d_model) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.mlp = _mlp(d_model, dim_feedforward, dropout)
        self.trend_coef = nn.Linear(d_model, n_channels * (trend_order + 1))
        self.season_in = nn.Linear(d_model, d_model)
        self.season_out = nn.Linear(d_model, n_channels)
        self.top_k = top_k
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, h, c, memory):
        a = self.ln1(h, c)
        h = h + self.self_attn(a, a, a, need_weights=False)[0]
        h = h + self.cross_attn(self.ln2(h, c), memory, memory, need_weights=False)[0]
        h = h + self.mlp(self.ln3(h, c))
        coef = self.trend_coef(h.mean(dim=1)).view(h.shape[0], self.basis.shape[1], -1)  # (B, order+1, C)
        trend = torch.einsum("lp,bpc->blc", self.basis, coef)
        season = self.season_out(top_k_season(self.season_in(h), self.top_k))
        return h, trend, season


class DiffusionTSNet(nn.Module):
    """``forward(x, k, context=None) -> x0_hat``; ``x`` ``(B, L, C)``, ``k`` ``(B,)`` step indices.

    Args:
        n_channels, max_len: the data shape (the system passes them).
        d_model, num_heads, dim_feedforward, dropout: transformer sizes.
        n_encoder_layers, n_decoder_layers: depth of each part (Diffusion-TS uses 2-4 each at length 24).
        trend_order: degree of the trend polynomial (Diffusion-TS: 3).
        top_k: seasonal frequencies kept per block; ``None``: ``max(1, int(log(max_len)))`` (Diffusion-TS's
            ``factor * log L`` with factor 1).
        context_dim: width of the context tokens (0: no context, the plain Diffusion-TS denoiser).
    """

    def __init__(self, n_channels: int, max_len: int, d_model: int = 64, num_heads: int = 4, dim_feedforward: int = 128,
                 n_encoder_layers: int = 2, n_decoder_layers: int = 2, dropout: float = 0.0, trend_order: int = 3,
                 top_k: int | None = None, context_dim: int = 0, step_sinusoid_dim: int = 64):
        super().__init__()
        checks = [(n_channels >= 1 and max_len >= 2, f"n_channels >= 1 and max_len >= 2 needed, got {n_channels}, {max_len}"),
                  (d_model % num_heads == 0, f"d_model={d_model} must be a multiple of num_heads={num_heads}"),
                  (n_encoder_layers >= 1 and n_decoder_layers >= 1, "n_encoder_layers and n_decoder_layers must be >= 1"),
                  (trend_order >= 0, f"trend_order must be >= 0, got {trend_order}"),
                  (context_dim >= 0, f"context_dim must be >= 0 (0: no context), got {context_dim}"),
                  (step_sinusoid_dim >= 4 and step_sinusoid_dim % 2 == 0, "step_sinusoid_dim must be even and >= 4")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DiffusionTSNet: {message}")
        self.n_channels, self.max_len, self.context_dim = n_channels, max_len, context_dim
        top_k = max(1, int(math.log(max_len))) if top_k is None else int(top_k)
        self.embed = nn.Conv1d(n_channels, d_model, kernel_size=3, padding=1, padding_mode="replicate")
        self.pos = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        w = step_sinusoid_dim // 2
        self.register_buffer("step_freqs", torch.exp(-math.log(1e4) * torch.arange(w, dtype=torch.float64) / w).float(),
                             persistent=False)
        self.step_mlp = nn.Sequential(nn.Linear(step_sinusoid_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.encoder = nn.ModuleList(_EncoderBlock(d_model, num_heads, dim_feedforward, dropout) for _ in range(n_encoder_layers))
        self.context_proj = nn.Linear(context_dim, d_model) if context_dim > 0 else None
        self.context_cond = None
        if context_dim > 0:
            self.context_cond = nn.Sequential(nn.Linear(context_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
            nn.init.zeros_(self.context_cond[-1].weight)
            nn.init.zeros_(self.context_cond[-1].bias)
        basis = polynomial_basis(max_len, trend_order)
        self.decoder = nn.ModuleList(
            _DecoderBlock(d_model, num_heads, dim_feedforward, dropout, n_channels, trend_order, top_k, basis)
            for _ in range(n_decoder_layers))
        self.ln_out = nn.LayerNorm(d_model)
        self.residual = nn.Linear(d_model, n_channels)

    def forward(self, x: torch.Tensor, k: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.decompose(x, k, context)["x0"]

    def decompose(self, x: torch.Tensor, k: torch.Tensor, context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``x0_hat`` and its interpretable parts ``trend``, ``season``, ``residual`` (each ``(B, L, C)``)."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.max_len, self.n_channels):
            raise ValueError(f"DiffusionTSNet expects x of shape (B, {self.max_len}, {self.n_channels}), got {tuple(x.shape)}")
        if (context is not None) != (self.context_proj is not None):
            raise ValueError(f"DiffusionTSNet was built with context_dim={self.context_dim}; "
                             f"{'pass' if self.context_proj is not None else 'do not pass'} context tokens")
        c = self.step_mlp(sinusoidal_table(k, self.step_freqs))
        if context is not None:  # global conditioning by the tokens (summed per-token MLP), like a class label
            c = c + self.context_cond(context).sum(dim=1).expand(c.shape[0], -1)
        h = self.embed(x.transpose(1, 2)).transpose(1, 2) + self.pos
        for block in self.encoder:
            h = block(h, c)
        memory = h
        if context is not None:
            tokens = self.context_proj(context)
            memory = torch.cat([h, tokens.expand(h.shape[0], -1, -1)], dim=1)
        trend = season = torch.zeros_like(x)
        for block in self.decoder:
            h, t_part, s_part = block(h, c, memory)
            trend, season = trend + t_part, season + s_part
        residual = self.residual(self.ln_out(h))
        return {"x0": trend + season + residual, "trend": trend, "season": season, "residual": residual}
