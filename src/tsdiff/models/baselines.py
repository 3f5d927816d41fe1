"""Point-forecast baselines a forecaster is judged against, behind one small interface.

Every baseline is a :class:`Forecaster`: ``fit(datamodule)`` on the train split (the val split for early
stopping where it applies), then ``predict(lookback)`` maps ``(N, L, C)`` windows to ``(N, H, C)``
forecasts in the datamodule's standardized space - the space the paper scores MSE in. The forecast task
(:mod:`tsdiff.tasks.forecast`) builds them from Hydra configs (``_target_`` is the registry) and scores
them next to TimeDiff on the same windows.

* :class:`SeasonalNaive` - repeat the last season (``season_length=1``: the last value).
* :class:`ARForecaster` - the linear AR model of TimeDiff's eq. (16) alone, on instance-normalized
  windows, fitted exactly as TimeDiff pretrains it (:func:`fit_point_model`, 20 epochs of Adam).
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

    Works on instance-normalized windows (``eps`` as TimeDiff's ``norm_eps``) and is trained for
    ``epochs`` (20 in the paper) with Adam on the normalized-space l2 loss; no early stopping.
    """

    name = "ar"

    def __init__(self, epochs: int = 20, lr: float = 1e-3, eps: float = 1e-3, seed: int = 0,
                 max_batches_per_epoch: int | None = None):
        super().__init__(epochs, lr, None, seed, max_batches_per_epoch)
        self.eps = float(eps)
        self._predict = instance_normalized(self.eps)

    def build(self, lookback: int, horizon: int, n_channels: int) -> nn.Module:
        return ARLinear(n_channels, lookback, horizon)

    def fit(self, datamodule: Any) -> "ARForecaster":
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
