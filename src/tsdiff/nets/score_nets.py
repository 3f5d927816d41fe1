"""Score networks of the frequency-diffusion system (Crabbé et al. 2024): transformer and LSTM.

Both map a noisy batch ``(batch, length, channels)`` and diffusion times ``(batch,)`` to a tensor of the
same shape. Tokens are the sequence positions; in the frequency domain each token is one frequency
component (real or imaginary part, see :mod:`tsdiff.diffusion.fourier`). Diffusion time enters through a
learned encoding (random Fourier features of ``t`` followed by an MLP, Song et al. 2021, App. H.2)
added to every token embedding at the input, as the reference does.

The transformer declares token blocks (the :class:`tsdiff.caching.interface.TokenNetwork` shape):
``embed_tokens``, ``layers`` and ``readout``; each layer splits into its K/V projection
(:meth:`ScoreTransformerLayer.project_qkv`), attention (:meth:`~ScoreTransformerLayer.attend`) and residual
composition (:meth:`~ScoreTransformerLayer.compose`, used by its own ``forward`` too), so that a token-level
cache recomputes only selected tokens against all keys with the same arithmetic. The LSTM declares none.
Plain ``nn.Module``s: no Lightning here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tsdiff.nets.embeddings import GaussianFourierTimeEncoding  # moved there; re-exported for old imports


class ScoreTransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer, ``x + Attn(LN(x))`` then ``h + FF(LN(h))``.

    Attention uses ``F.scaled_dot_product_attention``. Shapes: ``x`` is ``(batch, tokens, d_model)``.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.d_model, self.num_heads = d_model, num_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_feedforward)
        self.ff2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.d_model // self.num_heads).transpose(1, 2)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values of tokens ``x`` (the layer input), each ``(batch, heads, tokens, d_head)``."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of queries ``(b, h, n_q, d)`` to keys/values ``(b, h, n_k, d)``, then the output
        projection; returns the attention branch ``(b, n_q, d_model)``."""
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        b, _, n, _ = a.shape
        return self.out_proj(a.transpose(1, 2).reshape(b, n, self.d_model))

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.project_qkv(x))

    def feedforward_branch(self, h: torch.Tensor) -> torch.Tensor:
        out = self.ff2(F.gelu(self.ff1(self.norm2(h))))
        return F.dropout(out, self.dropout, self.training)

    def compose(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The layer's residual composition from its input ``x`` and attention branch ``attn``:
        ``h = x + attn``, then ``h + FF(LN(h))``. Defined once: the plain forward and the token cache's
        partial forward both call it."""
        h = x + attn
        return h + self.feedforward_branch(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(x, self.attention_branch(x))


class TransformerScoreNet(nn.Module):
    """Transformer encoder over sequence positions (the reference's ``score_model=default``).

    Args:
        n_channels, max_len: data shape ``(max_len, n_channels)``.
        d_model, num_layers, num_heads, dim_feedforward: width and depth. The reference uses 72 / 10 /
            12 / 2048 (3.2 M parameters, ~2 s per step at batch 64 on 2 CPU cores); tsdiff's default
            config is smaller so that the main job trains in minutes (see conf/score_model/default.yaml).
        dropout: dropout inside attention and feed-forward.
        patch_size: positions per token. ``1`` is the reference's one token per position (or frequency
            component); ``P > 1`` embeds ``P`` consecutive positions (zero-padded at the end) as one token
            and reads them out together, so attention costs ``(L / P)^2`` instead of ``L^2`` -- what makes
            long sequences (L = 187 beats) affordable on a CPU. ``"auto"`` picks the smallest ``P`` that
            gives at most ``max_tokens`` tokens.
        max_tokens: the token budget of ``patch_size="auto"``.
    """

    def __init__(
        self,
        n_channels: int,
        max_len: int,
        d_model: int = 64,
        num_layers: int = 4,
        num_heads: int = 4,
        dim_feedforward: int = 256,
        dropout: float = 0.0,
        patch_size: int | str = 1,
        max_tokens: int = 48,
    ):
        super().__init__()
        self.n_channels, self.max_len, self.d_model = n_channels, max_len, d_model
        if patch_size == "auto":
            if int(max_tokens) < 1:
                raise ValueError(f"max_tokens={max_tokens} must be >= 1")
            patch_size = math.ceil(max_len / int(max_tokens))
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
            raise ValueError(f"patch_size={patch_size!r} must be a positive integer or 'auto'")
        self.patch_size = patch_size
        self.num_tokens = math.ceil(max_len / patch_size)
        self.embed = nn.Linear(n_channels * patch_size, d_model)
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens, d_model) * 0.02)
        self.time = GaussianFourierTimeEncoding(d_model)
        self.layers = nn.ModuleList(
            [ScoreTransformerLayer(d_model, num_heads, dim_feedforward, dropout) for _ in range(num_layers)]
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_channels * patch_size)

    def embed_tokens(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Input tokens ``(batch, num_tokens, d_model)``: value embedding + position + time encoding."""
        if x.shape[1:] != (self.max_len, self.n_channels):
            raise ValueError(
                f"TransformerScoreNet expects inputs of shape (batch, {self.max_len}, {self.n_channels}), "
                f"got {tuple(x.shape)}"
            )
        if self.patch_size > 1:
            x = F.pad(x, (0, 0, 0, self.num_tokens * self.patch_size - self.max_len))
            x = x.reshape(x.shape[0], self.num_tokens, self.patch_size * self.n_channels)
        return self.embed(x) + self.pos + self.time(t)[:, None, :]

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        out = self.head(self.final_norm(h))
        if self.patch_size > 1:
            out = out.reshape(out.shape[0], self.num_tokens * self.patch_size, self.n_channels)[:, : self.max_len]
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(x, t)
        for layer in self.layers:
            h = layer(h)
        return self.readout(h)


class LSTMScoreNet(nn.Module):
    """Bidirectional LSTM stack over sequence positions (the reference's ``score_model=lstm``).

    The two directions have ``d_model // 2`` units each, so the width matches the transformer's.
    """

    def __init__(self, n_channels: int, max_len: int, d_model: int = 64, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"LSTMScoreNet needs an even d_model (two directions), got {d_model}")
        self.n_channels, self.max_len, self.d_model = n_channels, max_len, d_model
        self.embed = nn.Linear(n_channels, d_model)
        self.time = GaussianFourierTimeEncoding(d_model)
        self.lstm = nn.LSTM(d_model, d_model // 2, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(d_model, n_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.max_len, self.n_channels):
            raise ValueError(
                f"LSTMScoreNet expects inputs of shape (batch, {self.max_len}, {self.n_channels}), got {tuple(x.shape)}"
            )
        h = self.embed(x) + self.time(t)[:, None, :]
        out, _ = self.lstm(h)
        return self.head(out)
