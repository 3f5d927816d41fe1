"""Networks of TimeDiff (Shen & Kwok, ICML 2023).

Plain ``nn.Module`` s: no Lightning, no diffusion schedule, no normalization state. The system
(:class:`tsdiff.models.timediff.TimeDiff`) gets them injected (``conf/model/timediff.yaml`` builds them
with :func:`condition_network` / :func:`denoising_network`) and decides how they are combined.

Layout. Series enter and leave every module here as ``(batch, length, channels)`` (tsdiff's layout);
the convolutional modules transpose internally to PyTorch's ``(batch, channels, length)``. In the
paper's notation ``d`` = channels, ``L`` = lookback, ``H`` = horizon, ``d' = d'' = hidden`` (256).

Modules
-------
* :class:`ConvBlock` - one block of Table 11: Conv1d(k=3, stride 1, padding 1) -> BatchNorm1d ->
  LeakyReLU(0.1) -> Dropout(0.1).
* :class:`ConditionNet` - the conditioning network ``F``: ``d x L -> d x H`` (Table 10, Sec. 3.2.1).
* :class:`TimeDiffDenoiser` - the denoising network of Sec. 3.3: input projection ``z_1^k``, step
  embedding (:class:`~tsdiff.nets.embeddings.StepEmbedding`, eq. 17), convolutional encoder ``z_2^k``,
  decoder fusing the condition ``c`` of eq. (13).
* :class:`PerChannel` / :class:`PerChannelDenoiser` - run a univariate (``d = 1``) conditioning network
  or denoiser on every variable of a multivariate series separately, with shared weights: the
  channel-independence setup of TimeDiff's Appendix C (Table 12) and PatchTST.
* :func:`mixup_mask` - the mixing matrix of future mixup (eq. 14).
* :func:`condition_network` / :func:`denoising_network` - build ``F`` / the denoiser for ``d`` variables,
  multivariate or channel-independent.

The linear AR model ``M_ar`` (eq. 16) and instance normalization live in :mod:`tsdiff.nets.baselines`.
"""

from __future__ import annotations

import torch
from torch import nn

from tsdiff.nets.baselines import check_positive as _check_positive
from tsdiff.nets.baselines import check_series as _check_series
from tsdiff.nets.embeddings import StepEmbedding

__all__ = [
    "ConvBlock",
    "ConditionNet",
    "TimeDiffDenoiser",
    "PerChannel",
    "PerChannelDenoiser",
    "condition_network",
    "denoising_network",
    "mixup_mask",
    "gather_channels",
    "draw_channels",
]


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

    ``out_groups`` > 1 widens the output to ``out_groups * d`` channels (group-major, the residual goes to
    the first group only): ``out_groups=2`` gives the system a predictive log-variance next to its mean
    (:class:`tsdiff.models.timediff.TimeDiff`'s ``gaussian_skip``).
    """

    def __init__(self, n_channels: int, horizon: int, cond_channels: int, hidden: int = 256,
                 n_proj_blocks: int = 2, n_encoder_blocks: int = 2, n_decoder_blocks: int = 2,
                 step_sinusoid_dim: int = 128, step_hidden_dim: int = 128, dropout: float = 0.1,
                 residual: bool = True, out_groups: int = 1):
        super().__init__()
        _check_positive(n_channels=n_channels, horizon=horizon, cond_channels=cond_channels, hidden=hidden,
                        n_proj_blocks=n_proj_blocks, n_encoder_blocks=n_encoder_blocks,
                        n_decoder_blocks=n_decoder_blocks, out_groups=out_groups)
        self.n_channels, self.horizon, self.cond_channels = n_channels, horizon, cond_channels
        self.out_groups = int(out_groups)
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
            nn.Conv1d(hidden, n_channels * self.out_groups, 3, padding=1),
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
            z_mix = cond[..., : self.n_channels]
            out = torch.cat([out[..., : self.n_channels] + z_mix, out[..., self.n_channels :]], dim=-1)
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
        out = self.net(_to_series(x), k.repeat_interleave(c), cond_s)  # (B * C, H, out_groups)
        g = out.shape[-1]
        return out.reshape(b, c, h, g).permute(0, 2, 3, 1).reshape(b, h, g * c)  # group-major, like cond


def condition_network(n_channels: int, lookback: int, horizon: int, *, hidden: int = 256, n_blocks: int = 2,
                      dropout: float = 0.1, channel_independent: bool = False) -> nn.Module:
    """``F`` for ``n_channels`` variables: a :class:`ConditionNet` over all of them, or (channel
    independence) one univariate :class:`ConditionNet` shared by every variable."""
    net_c = 1 if channel_independent else n_channels
    net = ConditionNet(net_c, lookback, horizon, hidden=hidden, n_blocks=n_blocks, dropout=dropout)
    return PerChannel(net) if channel_independent else net


def denoising_network(n_channels: int, horizon: int, cond_channels: int, *, hidden: int = 256, n_proj_blocks: int = 2,
                      n_encoder_blocks: int = 2, n_decoder_blocks: int = 2, step_sinusoid_dim: int = 128,
                      step_hidden_dim: int = 128, dropout: float = 0.1, residual: bool = True,
                      channel_independent: bool = False, out_groups: int = 1) -> nn.Module:
    """The denoiser for ``n_channels`` variables and a condition of ``cond_channels`` channels
    (``G * n_channels``, ``G`` groups such as ``[z_mix, z_ar]``): a :class:`TimeDiffDenoiser` over all
    variables, or (channel independence) a univariate one shared by every variable, which sees the ``G``
    condition channels of its own variable."""
    if cond_channels % n_channels:
        raise ValueError(f"cond_channels={cond_channels} must be a multiple of n_channels={n_channels} (G groups of d)")
    net_c = 1 if channel_independent else n_channels
    net = TimeDiffDenoiser(net_c, horizon, cond_channels // n_channels * net_c, hidden=hidden,
                           n_proj_blocks=n_proj_blocks, n_encoder_blocks=n_encoder_blocks,
                           n_decoder_blocks=n_decoder_blocks, step_sinusoid_dim=step_sinusoid_dim,
                           step_hidden_dim=step_hidden_dim, dropout=dropout, residual=residual, out_groups=out_groups)
    return PerChannelDenoiser(net) if channel_independent else net


MIXUP_KINDS = ("soft", "hard", "segment")


def mixup_mask(shape: tuple[int, ...], kind: str = "soft", tau: float = 0.5, segment_mean: float = 3.0,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Mixing matrix ``m^k`` of future mixup (eq. 14) for a ``(B, H, C)`` batch.

    ``m = 1`` keeps ``F(x_lookback)``, ``m = 0`` reveals the ground-truth future.

    * ``soft``: ``m ~ U[0, 1)`` elementwise (the paper's default).
    * ``hard``: ``m = 1[u < tau]``, a binary mask revealing the truth at a share ``1 - tau`` of the
      positions (Sec. 4.3.2; Table 5 finds small ``tau`` - much truth revealed - harmful, which fixes the
      direction of the threshold).
    * ``segment``: Zerveas et al. (2021) masks along time per variable: segments with ``m = 1`` have a
      geometric length of mean ``segment_mean`` (3), followed by ``m = 0`` segments of mean
      ``segment_mean (1 - tau) / tau``, so a share ``tau`` of the steps keeps ``F``.
    """
    if kind not in MIXUP_KINDS:
        raise ValueError(f"mixup={kind!r} is unknown; choose one of {', '.join(MIXUP_KINDS)}")
    gen_device = generator.device if generator is not None else device
    if kind == "soft":
        return torch.rand(shape, generator=generator, device=gen_device).to(device)
    if not 0.0 < tau < 1.0:
        raise ValueError(f"mixup_tau must lie in (0, 1) for {kind} mixup, got {tau}")
    if kind == "hard":
        return (torch.rand(shape, generator=generator, device=gen_device) < tau).float().to(device)
    if segment_mean < 1.0:
        raise ValueError(f"mixup_segment_mean must be >= 1, got {segment_mean}")
    batch, length, channels = shape
    # a two-state Markov chain along time: leave a kept-F segment w.p. 1/mean, leave a revealed segment
    # w.p. tau/((1-tau) mean); its stationary share of kept-F steps is tau
    p_leave_masked = 1.0 / segment_mean
    p_leave_unmasked = min(1.0, p_leave_masked * tau / (1.0 - tau))
    u = torch.rand((length, batch, channels), generator=generator, device=gen_device)
    state = u[0] < tau
    steps = [state]
    for i in range(1, length):
        flip = torch.where(state, u[i] < p_leave_masked, u[i] < p_leave_unmasked)
        state = state ^ flip
        steps.append(state)
    return torch.stack(steps, dim=1).float().to(device)


def gather_channels(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """``x[b, :, channels[b]]`` for every window ``b``: ``(B, T, C)``, ``(B, k)`` -> ``(B, T, k)``."""
    return x.gather(2, channels[:, None, :].expand(-1, x.shape[1], -1))


def draw_channels(batch_size: int, n_channels: int, k: int | None, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``k`` distinct variables per window, ``(B, k)`` indices (channel-independent training on a budget),
    or ``None`` for all of them (``k`` null or not below ``n_channels``)."""
    if k is None or k >= n_channels:
        return None
    gen_device = generator.device if generator is not None else device
    order = torch.rand((batch_size, n_channels), generator=generator, device=gen_device).argsort(dim=1)
    return order[:, : int(k)].to(device)
