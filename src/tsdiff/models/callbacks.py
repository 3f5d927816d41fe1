"""Lightning callbacks that carry training recipes, so systems keep only their networks, schedule and loss.

* :class:`EMA` - the one exponential moving average of the weights for every system, built on Lightning's
  :class:`~pytorch_lightning.callbacks.WeightAveraging` (torch ``AveragedModel``): validation scores the
  averaged weights, training ends with them in the module, mid-run checkpoints hold both (resumable).
* :class:`RestoreBestWeights` - keep the (averaged) weights of the best monitored value and load them back
  at the end of training (model selection).
* :class:`ARPretraining` - TimeDiff's AR pretraining on the training split (Sec. 3.2.2), at fit start.
* :class:`ValForecastMSE` - log ``val/forecast_mse``, the error of a cheap forecast on val windows, as a
  selection metric for forecasters (TimeDiff's ``select_by=val_forecast``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from tsdiff.models.baselines import check_ar_fit, chooses_ridge_on_val, fit_ar_least_squares, fit_point_model
from tsdiff.sampling.forecast import sample_forecasts

__all__ = ["EMA", "RestoreBestWeights", "ARPretraining", "ValForecastMSE", "pretrain_ar"]

log = logging.getLogger(__name__)


class EMA(WeightAveraging):
    """``ema <- decay * ema + (1 - decay) * weights`` after every optimizer step; the first update starts
    the average at the current weights. Parameters are averaged, buffers (BatchNorm statistics, flags)
    follow the live module (``use_buffers=False``).

    ``warmup=True`` uses ``min(decay, (1 + k) / (10 + k))`` at optimizer step ``k``, so short runs are not
    dominated by the first weights (the score model's schedule).

    Unlike the plain callback, once training has ended (averaged weights copied into the module, possibly
    replaced by :class:`RestoreBestWeights`) checkpoints hold the module's weights as they are. A fit that
    stops to be resumed later (``interrupted = True``, set by the train task on Ctrl+C / SIGTERM) ends like a
    mid-run checkpoint instead: averaged weights in ``state_dict`` (what sampling loads), live ones in
    ``current_model_state`` (what ``resume=`` continues from).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = False, device: torch.device | str | None = None):
        self.check_decay(decay)
        if not decay:
            raise ValueError("EMA(decay=0) averages nothing; leave the callback out instead")
        self.decay, self.warmup = float(decay), bool(warmup)
        super().__init__(device=device, use_buffers=False, multi_avg_fn=self._update)
        self._finished = False
        self.interrupted = False

    @staticmethod
    def check_decay(decay: float | None) -> None:
        if decay is not None and not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (null or 0: no weight averaging), got {decay}")

    def decay_at(self, n_averaged: int) -> float:
        """Decay of the update that follows ``n_averaged`` updates (optimizer step ``k = n_averaged + 1``)."""
        if not self.warmup:
            return self.decay
        k = n_averaged + 1
        return min(self.decay, (1 + k) / (10 + k))

    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        get_ema_multi_avg_fn(self.decay_at(int(n_averaged)))(averaged, current, n_averaged)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._finished = False
        self.interrupted = False
        super().setup(trainer, pl_module, stage)

    def averaged_state_dict(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """The module's ``state_dict`` with the averaged parameters (before the first update: the live one)."""
        if self._average_model is None or int(self._average_model.n_averaged) == 0:
            return pl_module.state_dict()
        return self._average_model.module.state_dict()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interrupted:
            return
        if self._average_model is not None and int(self._average_model.n_averaged) > 0:
            super().on_train_end(trainer, pl_module)
        self._finished = True

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._finished:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)


class RestoreBestWeights(pl.Callback):
    """Keep the weights of the best ``monitor`` value in memory; load them back when training ends
    (``on_train_end`` runs before the fit-end checkpoint of the train task).

    The weights kept are the ones validation scored: ``ema``'s averaged weights when given. Without any
    validation result the module keeps the weights training ended with (the averaged ones with ``ema``).
    """

    def __init__(self, monitor: str = "val/loss", ema: EMA | None = None):
        self.monitor, self.ema = monitor, ema
        self.best = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed, so a resumed run still ends with the best weights of the whole run."""
        return {"monitor": self.monitor, "best": self.best, "state": self.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:
            self.best, self.state = float(state_dict["best"]), state_dict["state"]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        value = float(metrics[self.monitor])
        log.info("epoch %d: %s", trainer.current_epoch,
                 ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items() if k.startswith("val/")))
        if value < self.best:
            self.best = value
            source = self.ema.averaged_state_dict(pl_module) if self.ema is not None else pl_module.state_dict()
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in source.items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)
            log.info("restored the weights of the best %s = %.4f", self.monitor, self.best)


def pretrain_ar(model: Any, train_loader: Iterable[dict[str, torch.Tensor]], epochs: int, lr: float = 1e-3,
                eps: float = 1e-3, fit: str = "adam", ridge: float | Iterable[float] = 0.3,
                val_loader: Iterable[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Fit ``model.ar_model`` by minimising ``||z_ar - x_future||^2`` in the instance-normalized space
    (TimeDiff Sec. 3.2.2) and set ``model.ar_pretrained``; frozen weights stay frozen afterwards.
    ``fit="adam"``: ``epochs`` of Adam (the paper); ``fit="ridge"``: the closed-form minimiser plus a ridge
    penalty (:func:`tsdiff.models.baselines.fit_ar_least_squares`; a list of ``ridge`` values is chosen on
    ``val_loader``)."""
    if model.ar_model is None:
        raise RuntimeError("use_ar=false: this TimeDiff has no AR model to pretrain")
    check_ar_fit(fit, ridge)
    if fit == "ridge":
        info = fit_ar_least_squares(model.ar_model, train_loader, ridge, val_loader=val_loader, eps=eps)
        model.ar_pretrained.fill_(True)
        log.info("AR least squares: ridge %g, train MSE %.4f, val MSE %.4f (normalized space)", info["ridge"],
                 info["train_mse"], info["val_mse"])
        return info
    if epochs == 0:
        log.warning("ar_pretrain_epochs=0: the AR model starts from its random initialization")
        return {"train_loss": []}
    was_frozen = not any(p.requires_grad for p in model.ar_model.parameters())
    model.ar_model.requires_grad_(True)
    history = fit_point_model(model.ar_model, train_loader, epochs=int(epochs), lr=lr, loss_space="normalized", eps=eps)
    model.ar_model.requires_grad_(not was_frozen)
    model.ar_pretrained.fill_(True)
    log.info("AR pretraining: loss %.4f -> %.4f over %d epochs", history["train_loss"][0], history["train_loss"][-1], epochs)
    return history


class ARPretraining(pl.Callback):
    """Pretrain the AR model on the training split at fit start, once: the ``ar_pretrained`` buffer goes
    into checkpoints, so a resumed or reloaded model is not pretrained twice. The loader is the
    datamodule's ``train_dataloader()`` (``train_loader`` overrides it); ``fit="ridge"`` with several
    ``ridge`` values also reads its ``val_dataloader()`` (``val_loader`` overrides it)."""

    def __init__(self, epochs: int = 20, lr: float = 1e-3, eps: float = 1e-3,
                 train_loader: Iterable[dict[str, torch.Tensor]] | None = None, fit: str = "adam",
                 ridge: float | Iterable[float] = 0.3, val_loader: Iterable[dict[str, torch.Tensor]] | None = None):
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"ar_pretrain_epochs must be a non-negative integer, got {epochs!r}")
        self.ridge = check_ar_fit(fit, ridge)
        self.epochs, self.lr, self.eps, self.train_loader = epochs, lr, eps, train_loader
        self.fit, self.val_loader = fit, val_loader
        self.seconds = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.ar_model is None or bool(pl_module.ar_pretrained):
            return
        loader, val_loader = self.train_loader, self.val_loader
        several = chooses_ridge_on_val(self.fit, self.ridge)
        if loader is None or (several and val_loader is None):
            if trainer.datamodule is None:
                raise RuntimeError("TimeDiff's AR model is pretrained on the training split (Sec. 3.2.2) but the trainer has "
                                   "no datamodule: fit with datamodule=..., or set model.ar_pretrain_epochs=0 to skip it.")
            loader = loader if loader is not None else trainer.datamodule.train_dataloader()
            val_loader = val_loader if val_loader is not None or not several else trainer.datamodule.val_dataloader()
        start = time.perf_counter()
        pretrain_ar(pl_module, loader, self.epochs, self.lr, self.eps, fit=self.fit, ridge=self.ridge,
                    val_loader=val_loader if several else None)
        self.seconds = time.perf_counter() - start


class ValForecastMSE(pl.Callback):
    """Log ``val/forecast_mse``: the MSE of the mean of ``samples`` DPM-Solver++ forecasts (``steps``
    steps, fixed ``seed``) on the module's ``selection_windows`` - the quantity the test table reports, at
    a fraction of its cost - and ``val/forecast_crps``, the fair (unbiased) ensemble CRPS of the same
    samples, which does not reward collapsed samples as the MSE of a few-sample mean does. It runs in ``on_validation_epoch_end`` while validation holds the averaged
    weights, so it must come before :class:`EMA` in the callback list."""

    def __init__(self, samples: int = 2, steps: int = 10, seed: int = 2):
        self.samples, self.steps, self.seed = samples, steps, seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "selection_windows", None) is None:
            raise RuntimeError("select_by=val_forecast scores forecasts on val windows the train task hands over with "
                               "model.on_datamodule_ready(datamodule) before trainer.fit; call it (ForecastingDataModule, "
                               "datamodule=forecast_*) or set model.select_by=val_loss.")

    def forecast_scores(self, pl_module: pl.LightningModule, lookback: torch.Tensor, future: torch.Tensor) -> tuple[float, float]:
        """``(MSE of the sample mean, fair ensemble CRPS)`` on the given windows."""
        samples = sample_forecasts(pl_module, lookback, num_samples=self.samples, solver="dpm_solver++",
                                   steps=self.steps, seed=self.seed)
        y = future.to(samples)
        mse = float(((samples.mean(0) - y) ** 2).mean())
        s = samples.shape[0]
        skill = (samples - y).abs().mean(0)
        spread = (samples[:, None] - samples[None]).abs().sum((0, 1)) / (2 * s * max(s - 1, 1))
        return mse, float((skill - spread).mean())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            mse, crps = self.forecast_scores(pl_module, *pl_module.selection_windows)
            pl_module.log("val/forecast_mse", mse, sync_dist=True)
            pl_module.log("val/forecast_crps", crps, sync_dist=True)

