"""Networks of TimeDiff (Shen & Kwok, ICML 2023) and of the linear forecasting baselines.

Plain ``nn.Module`` s: no Lightning, no diffusion schedule, no normalization state. The system
(:class:`tsdiff.models.timediff.TimeDiff`) owns them and decides how they are combined.

Layout. Series enter and leave every module here as ``(batch, length, channels)`` (tsdiff's layout);
the convolutional modules transpose internally to PyTorch's ``(batch, channels, length)``. In the
paper's notation ``d`` = channels, ``L`` = lookback, ``H`` = horizon, ``d' = d'' = hidden`` (256).

Modules
-------
* :class:`ConvBlock` - one block of Table 11: Conv1d(k=3, stride 1, padding 1) -> BatchNorm1d ->
  LeakyReLU(0.1) -> Dropout(0.1).
* :class:`StepEmbedding` - diffusion-step embedding ``p^k`` of eq. (17).
* :class:`ConditionNet` - the conditioning network ``F``: ``d x L -> d x H`` (Table 10, Sec. 3.2.1).
* :class:`ARLinear` - the linear AR model ``M_ar`` of eq. (16); also the "AR alone" baseline.
* :class:`TimeDiffDenoiser` - the denoising network of Sec. 3.3: input projection ``z_1^k``, step
  embedding, convolutional encoder ``z_2^k``, decoder fusing the condition ``c`` of eq. (13).
* :class:`PerChannel` / :class:`PerChannelDenoiser` - run a univariate (``d = 1``) conditioning network
  or denoiser on every variable of a multivariate series separately, with shared weights: the
  channel-independence setup of TimeDiff's Appendix C (Table 12) and PatchTST.
* :class:`DLinear` - DLinear (Zeng et al., AAAI 2023): moving-average decomposition + two linear maps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ConvBlock",
    "StepEmbedding",
    "ConditionNet",
    "ARLinear",
    "TimeDiffDenoiser",
    "PerChannel",
    "PerChannelDenoiser",
    "DLinear",
    "instance_normalize",
    "instance_denormalize",
]


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_series(x: torch.Tensor, length: int, channels: int, what: str) -> None:
    if x.ndim != 3 or x.shape[1] != length or x.shape[2] != channels:
        raise ValueError(
            f"{what} must have shape (batch, {length}, {channels}) = (batch, length, channels); got "
            f"{tuple(x.shape)}. tsdiff series are (batch, length, channels): transpose (batch, channels, "
            f"length) input with x.transpose(1, 2)."
        )


class ConvBlock(nn.Sequential):
    """Table 11's block: Conv1d(k=3, padding 1) -> BatchNorm1d -> LeakyReLU(0.1) -> Dropout(0.1).

    Works on ``(batch, channels, length)``; padding 1 keeps the length, so blocks stack freely.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dropout: float = 0.1,
                 negative_slope: float = 0.1):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so the length is kept, got {kernel_size}")
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2),
            nn.BatchNorm1d(out_channels),
            nn.LeakyReLU(negative_slope),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training, or any call that records gradients, runs the four layers. Inference (eval mode
        without autograd, as in the sampler) folds BatchNorm's running statistics into the convolution
        and applies LeakyReLU in place (Dropout is the identity in eval): the same function up to float
        rounding, about 30% faster for the thin, many-series batches of channel-independent sampling."""
        conv, bn, act, _ = self
        if self.training or torch.is_grad_enabled() or bn.running_mean is None or not bn.affine:
            return super().forward(x)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None]
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        y = nn.functional.conv1d(x, weight, bias, padding=conv.padding)
        return nn.functional.leaky_relu(y, act.negative_slope, inplace=True)


class StepEmbedding(nn.Module):
    """Diffusion-step embedding ``p^k`` (eq. 17).

    ``k_embedding = [sin(10^{4 j/(w-1)} k), cos(10^{4 j/(w-1)} k)]_{j=0..w-1}`` (the transformer's
    sinusoidal table as in DiffWave/CSDI, with ``w = sinusoid_dim / 2``), then two FC layers with
    SiLU: ``p^k = SiLU(FC(SiLU(FC(k_embedding))))``. The paper gives the FC width as 128 and needs
    ``p^k`` in ``R^{d'}`` (it is concatenated with ``z_1^k`` into ``2d' x H``), so the first FC maps to
    ``hidden_dim`` (128) and the second to ``out_dim`` (= ``d'``).

    ``k`` is the schedule's integer step index (float tensor ``(batch,)``).
    """

    def __init__(self, out_dim: int, sinusoid_dim: int = 128, hidden_dim: int = 128):
        super().__init__()
        _check_positive(out_dim=out_dim, sinusoid_dim=sinusoid_dim, hidden_dim=hidden_dim)
        if sinusoid_dim % 2 or sinusoid_dim < 4:
            raise ValueError(f"sinusoid_dim must be even and >= 4, got {sinusoid_dim}")
        w = sinusoid_dim // 2
        freqs = 10.0 ** (4.0 * torch.arange(w, dtype=torch.float64) / (w - 1))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim), nn.SiLU())

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """``k``: ``(batch,)`` step indices -> ``(batch, out_dim)``."""
        angles = k.float().reshape(-1, 1) * self.freqs.reshape(1, -1)
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))


class ConditionNet(nn.Module):
    """Conditioning network ``F``: lookback ``(batch, L, d)`` -> ``(batch, H, d)`` (Table 10).

    The paper only says "a convolution network" mapping ``d x L`` to ``d x H``. Here: a stack of
    Table-11 blocks over the lookback (``d -> hidden -> ... -> d`` channels, length ``L`` kept), added to
    the input as a residual so that ``F`` starts close to a linear map, then one linear layer along
    time ``L -> H`` shared by all channels (the only way a length-preserving conv stack can reach the
    horizon length).
    """

    def __init__(self, n_channels: int, lookback: int, horizon: int, hidden: int = 256, n_blocks: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        _check_positive(n_channels=n_channels, lookback=lookback, horizon=horizon, hidden=hidden, n_blocks=n_blocks)
        self.n_channels, self.lookback, self.horizon = n_channels, lookback, horizon
        layers: list[nn.Module] = [ConvBlock(n_channels, hidden, dropout=dropout)]
        layers += [ConvBlock(hidden, hidden, dropout=dropout) for _ in range(n_blocks - 1)]
        layers.append(nn.Conv1d(hidden, n_channels, 3, padding=1))
        self.conv = nn.Sequential(*layers)
        self.time_proj = nn.Linear(lookback, horizon)

    def zero_output_(self) -> "ConditionNet":
        """Zero the last layer (``L -> H``), so ``F`` outputs 0 until training moves it."""
        nn.init.zeros_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        return self

    def forward(self, lookback: torch.Tensor) -> torch.Tensor:
        _check_series(lookback, self.lookback, self.n_channels, "ConditionNet input (lookback window)")
        x = lookback.transpose(1, 2)  # (B, d, L)
        x = x + self.conv(x)
        return self.time_proj(x).transpose(1, 2)  # (B, H, d)


class ARLinear(nn.Module):
    """Linear AR model ``z_ar = sum_{i=-L+1}^{0} W_i ⊙ X_i + B`` (eq. 16).

    ``X_i`` holds ``H`` copies of the lookback column ``x_i`` (``d`` values), ``W_i, B in R^{d x H}``:
    every channel ``c`` and horizon step ``h`` get their own weights,
    ``z_ar[h, c] = sum_i W[i, c, h] x[i, c] + B[h, c]``. Channels do not mix (a Hadamard product), and
    all ``H`` outputs come at once (no autoregressive decoding). ``weight`` is stored ``(L, d, H)``.
    """

    def __init__(self, n_channels: int, lookback: int, horizon: int):
        super().__init__()
        _check_positive(n_channels=n_channels, lookback=lookback, horizon=horizon)
        self.n_channels, self.lookback, self.horizon = n_channels, lookback, horizon
        # nn.Linear's default init (uniform in +-1/sqrt(fan_in)) with fan_in = L
        bound = 1.0 / math.sqrt(lookback)
        self.weight = nn.Parameter(torch.empty(lookback, n_channels, horizon).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(horizon, n_channels))

    def forward(self, lookback: torch.Tensor) -> torch.Tensor:
        _check_series(lookback, self.lookback, self.n_channels, "ARLinear input (lookback window)")
        return torch.einsum("blc,lch->bhc", lookback, self.weight) + self.bias


class TimeDiffDenoiser(nn.Module):
    """Denoising network ``x_theta(x^k, k | c)`` of Sec. 3.3 (Fig. 1, Tables 10-11).

    * input projection: Table-11 blocks ``d -> d'`` (then ``d' -> d'``) give ``z_1^k`` ``(d' x H)``;
    * step embedding ``p^k`` (eq. 17) broadcast over the ``H`` steps and concatenated -> ``2d' x H``;
    * encoder: blocks ``2d' -> d'' -> ... -> d''`` give ``z_2^k``;
    * decoder: ``concat(c, z_2^k)`` (``cond_channels + d''`` channels) -> blocks -> a plain Conv1d to
      ``d`` outputs (no norm/activation: the output is data or noise, unbounded).
    * ``residual=True`` (default): the decoder output is added to ``z_mix`` (the first ``d`` channels of
      ``c``), ``x_theta = decoder(concat(c, z_2^k)) + z_mix``, as in the authors' released code
      (``use_residual``, ``out = combine_conv(out) + pred_out``). Without it ``c`` reaches the output
      only through three conv/BatchNorm/Dropout layers, the conditioning network ``F`` gets no direct
      signal and the denoiser learned to predict worse than the AR model it is given (energy: val MSE
      0.356 vs AR 0.263 after 300 steps; 0.267 with the residual).

    ``cond_channels`` is ``2d`` for ``c = concat(z_mix, z_ar)`` (eq. 13) and ``d`` when the AR model is
    switched off (Table 4's ablation). The output is read as ``x0`` or ``eps`` by the system.
    """

    def __init__(self, n_channels: int, horizon: int, cond_channels: int, hidden: int = 256,
                 n_proj_blocks: int = 2, n_encoder_blocks: int = 2, n_decoder_blocks: int = 2,
                 step_sinusoid_dim: int = 128, step_hidden_dim: int = 128, dropout: float = 0.1,
                 residual: bool = True):
        super().__init__()
        _check_positive(n_channels=n_channels, horizon=horizon, cond_channels=cond_channels, hidden=hidden,
                        n_proj_blocks=n_proj_blocks, n_encoder_blocks=n_encoder_blocks,
                        n_decoder_blocks=n_decoder_blocks)
        self.n_channels, self.horizon, self.cond_channels = n_channels, horizon, cond_channels
        if residual and cond_channels < n_channels:
            raise ValueError(f"residual=True adds z_mix (the first {n_channels} channels of c) to the output; "
                             f"cond_channels={cond_channels} is too small")
        self.residual = bool(residual)
        self.input_proj = nn.Sequential(
            ConvBlock(n_channels, hidden, dropout=dropout),
            *[ConvBlock(hidden, hidden, dropout=dropout) for _ in range(n_proj_blocks - 1)],
        )
        self.step_embedding = StepEmbedding(hidden, step_sinusoid_dim, step_hidden_dim)
        self.encoder = nn.Sequential(
            ConvBlock(2 * hidden, hidden, dropout=dropout),
            *[ConvBlock(hidden, hidden, dropout=dropout) for _ in range(n_encoder_blocks - 1)],
        )
        self.decoder = nn.Sequential(
            ConvBlock(cond_channels + hidden, hidden, dropout=dropout),
            *[ConvBlock(hidden, hidden, dropout=dropout) for _ in range(n_decoder_blocks - 1)],
            nn.Conv1d(hidden, n_channels, 3, padding=1),
        )

    def zero_output_(self) -> "TimeDiffDenoiser":
        """Zero the decoder's last convolution: with ``residual=True`` the untrained denoiser then returns
        ``z_mix`` exactly instead of ``z_mix`` plus random-weight noise."""
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)
        return self

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, d)`` diffused future; ``k``: ``(B,)`` steps; ``cond``: ``(B, H, cond_channels)``."""
        _check_series(x, self.horizon, self.n_channels, "TimeDiffDenoiser input x^k")
        _check_series(cond, self.horizon, self.cond_channels, "TimeDiffDenoiser condition c")
        if k.shape != (x.shape[0],):
            raise ValueError(f"diffusion steps k must have shape ({x.shape[0]},), got {tuple(k.shape)}")
        z1 = self.input_proj(x.transpose(1, 2))  # (B, d', H)
        p = self.step_embedding(k).unsqueeze(-1).expand(-1, -1, z1.shape[-1])  # (B, d', H)
        z2 = self.encoder(torch.cat([z1, p], dim=1))  # (B, d'', H)
        out = self.decoder(torch.cat([cond.transpose(1, 2), z2], dim=1)).transpose(1, 2)  # (B, H, d)
        if self.residual:
            out = out + cond[..., : self.n_channels]  # + z_mix
        return out


def _to_series(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, C)`` -> ``(B * C, T, 1)``: every variable becomes its own univariate series."""
    b, t, c = x.shape
    return x.transpose(1, 2).reshape(b * c, t, 1)


def _from_series(x: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Inverse of :func:`_to_series`: ``(B * C, T, 1)`` -> ``(B, T, C)``."""
    bc, t, _ = x.shape
    return x.reshape(bc // n_channels, n_channels, t).transpose(1, 2)


class PerChannel(nn.Module):
    """Apply a univariate ``(batch, L, 1) -> (batch, H, 1)`` network to each variable of a
    ``(batch, L, C)`` input with shared weights (channel independence, TimeDiff Appendix C).

    Any ``C`` works, so a training step may feed a subset of the variables."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def zero_output_(self) -> "PerChannel":
        self.net.zero_output_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"PerChannel input must be (batch, length, channels), got {tuple(x.shape)}")
        return _from_series(self.net(_to_series(x)), x.shape[-1])


class PerChannelDenoiser(nn.Module):
    """Channel-independent :class:`TimeDiffDenoiser`: the diffused future ``(B, H, C)`` is denoised as
    ``B * C`` univariate series by a denoiser built for ``d = 1``.

    The condition arrives in the multivariate layout ``(B, H, G * C)``, ``G`` groups of ``C`` channels
    (``[z_mix, z_ar]``: ``G = 2``); each series gets its own ``G`` condition channels, so the inner
    denoiser sees ``cond_channels = G``."""

    def __init__(self, net: TimeDiffDenoiser):
        super().__init__()
        if net.n_channels != 1:
            raise ValueError(f"PerChannelDenoiser wraps a univariate denoiser (n_channels=1), got {net.n_channels}")
        self.net = net
        self.groups = net.cond_channels

    def zero_output_(self) -> "PerChannelDenoiser":
        self.net.zero_output_()
        return self

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or cond.ndim != 3 or cond.shape[:2] != x.shape[:2] or cond.shape[-1] != self.groups * x.shape[-1]:
            raise ValueError(
                f"channel-independent denoiser: x must be (B, H, C) and cond (B, H, {self.groups} * C); got x "
                f"{tuple(x.shape)}, cond {tuple(cond.shape)}"
            )
        b, h, c = x.shape
        # (B, H, G * C) -> (B, C, H, G) -> (B * C, H, G): series (b, ch) keeps the G values of its channel
        cond_s = cond.reshape(b, h, self.groups, c).permute(0, 3, 1, 2).reshape(b * c, h, self.groups)
        out = self.net(_to_series(x), k.repeat_interleave(c), cond_s)
        return _from_series(out, c)


class _MovingAverage(nn.Module):
    """Trend by a centred moving average with edge replication (keeps the length)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"moving-average kernel_size must be a positive odd integer, got {kernel_size}")
        self.kernel_size = kernel_size
        self.pool = nn.AvgPool1d(kernel_size, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        pad = (self.kernel_size - 1) // 2
        x = torch.cat([x[..., :1].expand(-1, -1, pad), x, x[..., -1:].expand(-1, -1, pad)], dim=-1)
        return self.pool(x)


class DLinear(nn.Module):
    """DLinear (Zeng et al., "Are transformers effective for time series forecasting?", AAAI 2023).

    The lookback is split into a trend (moving average, kernel 25 by default) and a remainder
    ("seasonal"); each part is mapped ``L -> H`` by a linear layer along time and the two forecasts are
    summed. ``individual=True`` gives every channel its own pair of layers, otherwise they are shared.
    """

    def __init__(self, n_channels: int, lookback: int, horizon: int, kernel_size: int = 25, individual: bool = False):
        super().__init__()
        _check_positive(n_channels=n_channels, lookback=lookback, horizon=horizon)
        self.n_channels, self.lookback, self.horizon = n_channels, lookback, horizon
        self.individual = bool(individual)
        self.decomp = _MovingAverage(kernel_size)
        n = n_channels if self.individual else 1
        self.trend = nn.ModuleList(nn.Linear(lookback, horizon) for _ in range(n))
        self.seasonal = nn.ModuleList(nn.Linear(lookback, horizon) for _ in range(n))

    def forward(self, lookback: torch.Tensor) -> torch.Tensor:
        _check_series(lookback, self.lookback, self.n_channels, "DLinear input (lookback window)")
        x = lookback.transpose(1, 2)  # (B, C, L)
        trend = self.decomp(x)
        seasonal = x - trend
        if self.individual:
            out = torch.stack(
                [self.trend[c](trend[:, c]) + self.seasonal[c](seasonal[:, c]) for c in range(self.n_channels)], dim=1
            )
        else:
            out = self.trend[0](trend) + self.seasonal[0](seasonal)
        return out.transpose(1, 2)  # (B, H, C)


def instance_normalize(lookback: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Instance normalization of each lookback window (Kim et al. 2021; TimeDiff Sec. 4.1).

    Per window and variable, subtract the lookback mean and divide by the lookback standard deviation
    ``sqrt(var + eps)``. Returns ``(normalized, mean, std)`` with ``mean, std`` of shape ``(B, 1, C)``;
    the same statistics normalize the window's future during training and are added back to the
    prediction (:func:`instance_denormalize`). ``eps`` bounds the division for flat windows (a channel
    that is constant over the lookback, e.g. energy's ``lights``, would otherwise blow its future up).
    """
    if lookback.ndim != 3:
        raise ValueError(f"lookback must be (batch, length, channels), got shape {tuple(lookback.shape)}")
    mean = lookback.mean(dim=1, keepdim=True)
    std = torch.sqrt(lookback.var(dim=1, keepdim=True, unbiased=False) + eps)
    return (lookback - mean) / std, mean, std


def instance_denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`instance_normalize` for any ``(..., B, H, C)`` tensor."""
    return x * std + mean
