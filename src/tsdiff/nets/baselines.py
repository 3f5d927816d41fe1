"""Linear forecasting networks and instance normalization (plain ``nn.Module`` s, no Lightning).

Series enter and leave as ``(batch, length, channels)``; ``L`` = lookback, ``H`` = horizon, ``d`` =
channels.

* :class:`ARLinear` - the linear AR model ``M_ar`` of TimeDiff's eq. (16); TimeDiff's condition uses it
  and the forecast command scores it alone (:class:`tsdiff.models.baselines.ARForecaster`).
* :class:`DLinear` - DLinear (Zeng et al., AAAI 2023): moving-average decomposition + two linear maps.
* :func:`instance_normalize` / :func:`instance_denormalize` - per-window normalization (Kim et al. 2021;
  TimeDiff Sec. 4.1), shared by TimeDiff and the AR baseline.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ARLinear", "DLinear", "instance_normalize", "instance_denormalize", "check_positive", "check_series"]


def check_positive(**kwargs: int) -> None:
    """A clear error for a size that is not a positive integer."""
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_series(x: torch.Tensor, length: int, channels: int, what: str) -> None:
    """A clear error for a series that is not ``(batch, length, channels)``."""
    if x.ndim != 3 or x.shape[1] != length or x.shape[2] != channels:
        raise ValueError(
            f"{what} must have shape (batch, {length}, {channels}) = (batch, length, channels); got "
            f"{tuple(x.shape)}. tsdiff series are (batch, length, channels): transpose (batch, channels, "
            f"length) input with x.transpose(1, 2)."
        )


class ARLinear(nn.Module):
    """Linear AR model ``z_ar = sum_{i=-L+1}^{0} W_i ⊙ X_i + B`` (TimeDiff eq. 16).

    ``X_i`` holds ``H`` copies of the lookback column ``x_i`` (``d`` values), ``W_i, B in R^{d x H}``:
    every channel ``c`` and horizon step ``h`` get their own weights,
    ``z_ar[h, c] = sum_i W[i, c, h] x[i, c] + B[h, c]``. Channels do not mix (a Hadamard product), and
    all ``H`` outputs come at once (no autoregressive decoding). ``weight`` is stored ``(L, d, H)``.
    """

    def __init__(self, n_channels: int, lookback: int, horizon: int):
        super().__init__()
        check_positive(n_channels=n_channels, lookback=lookback, horizon=horizon)
        self.n_channels, self.lookback, self.horizon = n_channels, lookback, horizon
        # nn.Linear's default init (uniform in +-1/sqrt(fan_in)) with fan_in = L
        bound = 1.0 / math.sqrt(lookback)
        self.weight = nn.Parameter(torch.empty(lookback, n_channels, horizon).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(horizon, n_channels))

    def forward(self, lookback: torch.Tensor) -> torch.Tensor:
        check_series(lookback, self.lookback, self.n_channels, "ARLinear input (lookback window)")
        return torch.einsum("blc,lch->bhc", lookback, self.weight) + self.bias


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
        check_positive(n_channels=n_channels, lookback=lookback, horizon=horizon)
        self.n_channels, self.lookback, self.horizon = n_channels, lookback, horizon
        self.individual = bool(individual)
        self.decomp = _MovingAverage(kernel_size)
        n = n_channels if self.individual else 1
        self.trend = nn.ModuleList(nn.Linear(lookback, horizon) for _ in range(n))
        self.seasonal = nn.ModuleList(nn.Linear(lookback, horizon) for _ in range(n))

    def forward(self, lookback: torch.Tensor) -> torch.Tensor:
        check_series(lookback, self.lookback, self.n_channels, "DLinear input (lookback window)")
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
