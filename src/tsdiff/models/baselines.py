"""Point-forecast baselines a forecaster is judged against, behind one small interface.

Every baseline is a :class:`Forecaster`: ``fit(datamodule)`` on the train split (the val split for early
stopping where it applies), then ``predict(lookback)`` maps ``(N, L, C)`` windows to ``(N, H, C)``
forecasts in the datamodule's standardized space - the space the paper scores MSE in. The forecast task
(:mod:`tsdiff.tasks.forecast`) builds them from Hydra configs (``_target_`` is the registry) and scores
them next to TimeDiff on the same windows.

* :class:`SeasonalNaive` - repeat the last season (``season_length=1``: the last value).
* :class:`ARForecaster` - the linear AR model of TimeDiff's eq. (16) alone, on instance-normalized
  windows, fitted exactly as TimeDiff pretrains it: 20 epochs of Adam (:func:`fit_point_model`, the paper) or
  the closed-form ridge least squares of :func:`fit_ar_least_squares` (``fit="ridge"``).
* :class:`DLinearForecaster` - DLinear (Zeng et al., AAAI 2023), early-stopped on val MSE.

:func:`fit_point_model` is the one MSE training loop shared by these and by TimeDiff's AR pretraining.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from tsdiff.nets.baselines import ARLinear, DLinear, instance_denormalize, instance_normalize

__all__ = [
    "Forecaster",
    "SeasonalNaive",
    "ARForecaster",
    "DLinearForecaster",
    "fit_point_model",
    "evaluate_point_model",
    "fit_ar_least_squares",
    "AR_FITS",
    "check_ar_fit",
]

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
#: maps a batch's lookback to a forecast; lets the loop wrap a net with instance normalization
PredictFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _plain(net: nn.Module, lookback: torch.Tensor) -> torch.Tensor:
    return net(lookback)


def instance_normalized(eps: float) -> PredictFn:
    """Forecast in the instance-normalized space and map back (TimeDiff's data treatment, Sec. 4.1)."""

    def predict(net: nn.Module, lookback: torch.Tensor) -> torch.Tensor:
        normed, mean, std = instance_normalize(lookback, eps)
        return instance_denormalize(net(normed), mean, std)

    return predict


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate_point_model(net: nn.Module, loader: Iterable[Batch], predict: PredictFn = _plain,
                         loss_space: str = "data", eps: float = 1e-5) -> float:
    """Mean squared error of ``net`` over ``loader`` (same space as :func:`fit_point_model`'s loss)."""
    was_training = net.training
    net.eval()
    device = _device_of(net)
    total, count = 0.0, 0
    for batch in loader:
        lookback, future = batch["lookback"].to(device), batch["future"].to(device)
        err = _loss(net, predict, lookback, future, loss_space, eps)
        total += float(err) * future.numel()
        count += future.numel()
    net.train(was_training)
    return total / max(count, 1)


def _loss(net, predict, lookback, future, loss_space: str, eps: float) -> torch.Tensor:
    if loss_space == "normalized":
        # TimeDiff's AR pretraining: the l2 distance between z_ar and the future, both in the
        # instance-normalized space the diffusion model works in (Sec. 3.2.2).
        normed, mean, std = instance_normalize(lookback, eps)
        return torch.mean((net(normed) - (future - mean) / std) ** 2)
    return torch.mean((predict(net, lookback) - future) ** 2)


def fit_point_model(
    net: nn.Module,
    train_loader: Iterable[Batch],
    *,
    epochs: int,
    lr: float = 1e-3,
    val_loader: Iterable[Batch] | None = None,
    patience: int | None = None,
    predict: PredictFn = _plain,
    loss_space: str = "data",
    eps: float = 1e-5,
    max_batches_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``net`` with Adam on the MSE of its forecasts; returns the loss history.

    ``loss_space="data"`` scores ``predict(net, lookback)`` against the future in the datamodule's
    space; ``"normalized"`` scores ``net`` on instance-normalized windows (TimeDiff's AR pretraining).
    With ``val_loader`` and ``patience`` the epoch with the best val MSE is kept (early stopping).
    Shuffling comes from the loader (the datamodule seeds it), so a fixed seed gives a fixed run.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if loss_space not in ("data", "normalized"):
        raise ValueError(f"loss_space must be 'data' or 'normalized', got {loss_space!r}")
    device = _device_of(net)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "best_epoch": None}
    best_val, best_state, bad_epochs = math.inf, None, 0
    was_training = net.training
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for i, batch in enumerate(train_loader):
            if max_batches_per_epoch is not None and i >= max_batches_per_epoch:
                break
            lookback, future = batch["lookback"].to(device), batch["future"].to(device)
            loss = _loss(net, predict, lookback, future, loss_space, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * lookback.shape[0]
            count += lookback.shape[0]
        history["train_loss"].append(total / max(count, 1))
        if val_loader is not None:
            val = evaluate_point_model(net, val_loader, predict, loss_space, eps)
            history["val_loss"].append(val)
            if val < best_val:
                best_val, best_state, bad_epochs = val, copy.deepcopy(net.state_dict()), 0
                history["best_epoch"] = epoch
            else:
                bad_epochs += 1
                if patience is not None and bad_epochs >= patience:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.train(was_training)
    return history


#: how the AR model of eq. (16) is fitted: Adam epochs (the paper) | closed-form ridge least squares
AR_FITS = ("adam", "ridge")


def check_ar_fit(fit: str, ridge: float | Iterable[float]) -> float | list[float]:
    """Refuse an unknown ``ar_fit``; return ``ridge`` as a plain float or a list of plain floats (a Hydra
    ListConfig in saved hyperparameters would not load with ``weights_only=True``)."""
    if fit not in AR_FITS:
        raise ValueError(f"ar_fit={fit!r} is unknown; choose one of {', '.join(AR_FITS)}")
    return [float(r) for r in ridge] if isinstance(ridge, Iterable) else float(ridge)


def chooses_ridge_on_val(fit: str, ridge: float | list[float]) -> bool:
    """Whether a ridge fit picks among several values, and so reads validation windows."""
    return fit == "ridge" and isinstance(ridge, list) and len(ridge) > 1


@torch.no_grad()
def _normal_equations(loader: Iterable[Batch], n_channels: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per variable ``A = X1^T X1``, ``B = X1^T Y`` and ``sum Y^2`` of the instance-normalized windows
    (``X1`` = lookback and a column of ones), accumulated in float64 over the loader's batches."""
    a = b = yy = None
    n = 0
    for batch in loader:
        lookback, future = batch["lookback"].double(), batch["future"].double()
        x, mean, std = instance_normalize(lookback, eps)
        y = (future - mean) / std
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, L + 1, C)
        parts = (torch.einsum("blc,bmc->clm", x1, x1), torch.einsum("blc,bhc->clh", x1, y), (y * y).sum((0, 1)))
        a, b, yy = parts if a is None else (a + parts[0], b + parts[1], yy + parts[2])
        n += x.shape[0]
    if a is None or a.shape[0] != n_channels:
        raise ValueError(f"the AR least-squares fit needs a non-empty loader of {n_channels}-variable windows")
    return a, b, yy, n


def fit_ar_least_squares(net: ARLinear, train_loader: Iterable[Batch], ridge: float | Iterable[float] = 0.3,
                         val_loader: Iterable[Batch] | None = None, eps: float = 1e-3) -> dict[str, Any]:
    """Set ``net`` (:class:`ARLinear`) to the exact minimiser of TimeDiff's AR pretraining loss (Sec. 3.2.2:
    the l2 error of ``z_ar`` in the instance-normalized space) plus ``ridge * N * ||W||^2`` (the bias is not
    penalised), per variable in closed form - the classical least-squares AR fit, which 20 epochs of Adam on
    a ``L x H`` map per variable only approach. Several ``ridge`` values: the one with the lowest val MSE
    (normalized space, from ``val_loader``'s normal equations). Returns ``{"ridge", "val_mse", "train_mse"}``."""
    ridges = [float(r) for r in ([ridge] if isinstance(ridge, (int, float)) else ridge)]
    if not ridges or min(ridges) < 0:
        raise ValueError(f"ridge must be a non-negative number or a non-empty list of them, got {ridge!r}")
    if len(ridges) > 1 and val_loader is None:
        raise ValueError(f"{len(ridges)} ridge values are chosen on validation windows: pass val_loader or one value")
    a, b, yy, n = _normal_equations(train_loader, net.n_channels, eps)
    val = _normal_equations(val_loader, net.n_channels, eps) if val_loader is not None else None
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    eye[-1, -1] = 0.0  # the bias is not shrunk

    def mse(w: torch.Tensor, eq: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]) -> float:
        # sum ||X1 W - Y||^2 from the normal equations: tr(W^T A W) - 2 tr(W^T B) + sum Y^2
        a_, b_, yy_, n_ = eq
        sse = torch.einsum("clh,clm,cmh->", w, a_, w) - 2 * (w * b_).sum() + yy_.sum()
        return float(sse) / (n_ * net.horizon * net.n_channels)

    fits = []
    for r in ridges:
        w = torch.linalg.solve(a + r * n * eye, b)  # (C, L + 1, H)
        fits.append((mse(w, val) if val is not None else float("nan"), r, w))
    val_mse, best, w = min(fits, key=lambda f: f[0]) if val is not None else fits[0]
    net.weight.data.copy_(w[:, :-1].permute(1, 0, 2).to(net.weight))
    net.bias.data.copy_(w[:, -1].T.to(net.bias))
    return {"ridge": best, "val_mse": val_mse, "train_mse": mse(w, (a, b, yy, n)),
            "val_mse_by_ridge": {r: v for v, r, _ in fits}}


@runtime_checkable
class Forecaster(Protocol):
    """What the forecast harness needs from a baseline."""

    name: str

    def fit(self, datamodule: Any) -> "Forecaster": ...

    def predict(self, lookback: np.ndarray) -> np.ndarray: ...


def _check_lookback(lookback, lookback_len: int | None, n_channels: int | None) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(lookback), dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"lookback must be (N, L, C) windows, got shape {tuple(x.shape)}")
    if lookback_len is not None and x.shape[1] != lookback_len:
        raise ValueError(f"lookback windows have length {x.shape[1]}, the forecaster was fitted with L={lookback_len}")
    if n_channels is not None and x.shape[2] != n_channels:
        raise ValueError(f"lookback windows have {x.shape[2]} channels, the forecaster was fitted with C={n_channels}")
    return x


class SeasonalNaive:
    """``y_hat[t + h] = x[t + h - m * ceil(h / m)]``: the last observed season, repeated.

    ``season_length`` ``m`` = 1 is the naive (last value) forecast; it must not exceed the lookback.
    """

    def __init__(self, season_length: int = 1, name: str | None = None):
        if not isinstance(season_length, int) or season_length < 1:
            raise ValueError(f"season_length must be a positive integer, got {season_length!r}")
        self.season_length = season_length
        self.name = name or ("naive" if season_length == 1 else f"seasonal_naive(m={season_length})")
        self.horizon: int | None = None

    def fit(self, datamodule: Any) -> "SeasonalNaive":
        if self.season_length > datamodule.lookback:
            raise ValueError(
                f"season_length={self.season_length} exceeds the lookback L={datamodule.lookback}: the last season "
                f"is not in the window. Fix: raise datamodule.lookback to >= {self.season_length} or lower season_length."
            )
        self.horizon = int(datamodule.horizon)
        return self

    def predict(self, lookback: np.ndarray) -> np.ndarray:
        if self.horizon is None:
            raise RuntimeError("call fit(datamodule) before predict()")
        x = np.asarray(lookback, dtype=np.float32)
        if x.ndim != 3 or x.shape[1] < self.season_length:
            raise ValueError(f"lookback must be (N, L>= {self.season_length}, C), got {x.shape}")
        m = self.season_length
        idx = x.shape[1] - m + (np.arange(self.horizon) % m)
        return np.ascontiguousarray(x[:, idx])


class _NetForecaster:
    """A net trained by :func:`fit_point_model`; subclasses build the net and pick the loss space."""

    name = "net"

    def __init__(self, epochs: int, lr: float, patience: int | None, seed: int, max_batches_per_epoch: int | None):
        self.epochs, self.lr, self.patience, self.seed = int(epochs), float(lr), patience, int(seed)
        self.max_batches_per_epoch = max_batches_per_epoch
        self.net: nn.Module | None = None
        self.history: dict[str, Any] = {}
        self._predict: PredictFn = _plain

    def build(self, lookback: int, horizon: int, n_channels: int) -> nn.Module:
        raise NotImplementedError

    def _fit(self, datamodule: Any, **kwargs) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # weight init is the only randomness besides the seeded loader
            self.net = self.build(datamodule.lookback, datamodule.horizon, datamodule.n_channels)
        self.history = fit_point_model(
            self.net, datamodule.train_dataloader(), epochs=self.epochs, lr=self.lr,
            max_batches_per_epoch=self.max_batches_per_epoch, **kwargs,
        )

    @torch.no_grad()
    def predict(self, lookback: np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("call fit(datamodule) before predict()")
        self.net.eval()
        x = _check_lookback(lookback, self.net.lookback, self.net.n_channels).to(_device_of(self.net))
        return self._predict(self.net, x).cpu().numpy()


class ARForecaster(_NetForecaster):
    """TimeDiff's linear AR model (eq. 16) used alone, fitted as TimeDiff pretrains it (Sec. 3.2.2).

    Works on instance-normalized windows (``eps`` as TimeDiff's ``norm_eps``). ``fit="adam"`` (the paper):
    ``epochs`` (20) of Adam on the normalized-space l2 loss, no early stopping; ``fit="ridge"``: the closed-form
    least squares of :func:`fit_ar_least_squares`, ``ridge`` chosen on the val split when it is a list.
    """

    name = "ar"

    def __init__(self, epochs: int = 20, lr: float = 1e-3, eps: float = 1e-3, seed: int = 0,
                 max_batches_per_epoch: int | None = None, fit: str = "adam", ridge: float | Iterable[float] = 0.3):
        super().__init__(epochs, lr, None, seed, max_batches_per_epoch)
        self.ridge = check_ar_fit(fit, ridge)
        self.eps, self.fit_kind = float(eps), fit
        self._predict = instance_normalized(self.eps)

    def build(self, lookback: int, horizon: int, n_channels: int) -> nn.Module:
        return ARLinear(n_channels, lookback, horizon)

    def fit(self, datamodule: Any) -> "ARForecaster":
        if self.fit_kind == "ridge":
            self.net = self.build(datamodule.lookback, datamodule.horizon, datamodule.n_channels)
            several = chooses_ridge_on_val(self.fit_kind, self.ridge)
            self.history = fit_ar_least_squares(self.net, datamodule.train_dataloader(), self.ridge, eps=self.eps,
                                                val_loader=datamodule.val_dataloader() if several else None)
            return self
        self._fit(datamodule, loss_space="normalized", eps=self.eps)
        return self


class DLinearForecaster(_NetForecaster):
    """DLinear on the datamodule's standardized windows (no instance norm, as in Zeng et al.), trained
    with Adam on MSE and early-stopped on val MSE (``patience`` epochs)."""

    name = "dlinear"

    def __init__(self, epochs: int = 20, lr: float = 1e-3, patience: int = 3, kernel_size: int = 25,
                 individual: bool = False, seed: int = 0, max_batches_per_epoch: int | None = None):
        super().__init__(epochs, lr, patience, seed, max_batches_per_epoch)
        self.kernel_size, self.individual = int(kernel_size), bool(individual)

    def build(self, lookback: int, horizon: int, n_channels: int) -> nn.Module:
        return DLinear(n_channels, lookback, horizon, kernel_size=self.kernel_size, individual=self.individual)

    def fit(self, datamodule: Any) -> "DLinearForecaster":
        self._fit(datamodule, val_loader=datamodule.val_dataloader(), patience=self.patience)
        return self
