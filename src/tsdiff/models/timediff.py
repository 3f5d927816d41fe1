"""TimeDiff (Shen & Kwok, "Non-autoregressive Conditional Diffusion Models for Time Series Prediction",
ICML 2023) as a LightningModule.

Shapes: lookback ``(B, L, C)``, future ``(B, H, C)`` (tsdiff's ``(batch, length, channels)``); the paper
writes them ``d x L`` and ``d x H`` with ``d = C``.

What happens where
------------------
* **Instance normalization** (Sec. 4.1): every lookback window is centred and scaled per variable by its
  own mean/std; the future is scaled with the *lookback's* statistics (training target), and forecasts
  are mapped back with them (:meth:`TimeDiff.forecast`). Everything inside the model lives in this
  normalized space.
* **Condition** ``c = concat(z_mix, z_ar)`` (eq. 13), built once per window by :meth:`TimeDiff.condition`:
  ``z_mix = m ⊙ F(x_lookback) + (1 - m) ⊙ x_future`` while training (future mixup, eq. 14) and
  ``z_mix = F(x_lookback)`` otherwise (eq. 15); ``z_ar`` is the linear AR model (eq. 16).
* **Diffusion** over the future only (Sec. 3.1), K = 100 steps, cosine betas clipped to [1e-4, 0.1]
  (:class:`~tsdiff.diffusion.schedules.CosineSchedule`). The denoiser predicts the data ``x0`` (eq. 19;
  ``parameterization="eps"`` is Table 6's ablation, eq. 8).
* **Denoiser output**: ``x_theta = decoder(concat(c, z_2)) + z_mix`` (``decoder_residual=true``, the
  authors' released code); ``decoder_residual=false`` is the bare decoder of Fig. 1.
* **Sampling** goes through the shared :class:`~tsdiff.sampling.DiffusionSampler` via the denoiser
  contract (``denoise``, ``schedule``, ``parameterization``, ``sample_shape``); ``cond`` is
  ``{"c": (N, H, cond_channels)}``. ``solver="ddpm"`` with 100 steps is Algorithm 2 / eq. (18);
  ``"dpm_solver++"`` with <= 20 steps is the paper's fast sampler.

AR pretraining (Sec. 3.2.2: "pretrained on the training set", 20 epochs)
----------------------------------------------------------------------
:meth:`TimeDiff.pretrain_ar` fits ``M_ar`` on a loader of training windows. The train task calls
:meth:`TimeDiff.on_datamodule_ready` before ``trainer.fit``; if nobody did, :meth:`on_fit_start` does it
with the trainer's datamodule. The buffer ``ar_pretrained`` records it in checkpoints so a resumed or
reloaded model is never pretrained twice. After pretraining the AR weights keep training with the
diffusion loss (the paper calls it an *initialization*); ``freeze_ar=true`` keeps them fixed.

Ablation switches (Sec. 4.3): ``future_mixup`` on/off and ``mixup="soft" | "hard" | "segment"`` with
``mixup_tau`` (Table 5), ``use_ar`` (Table 4), ``parameterization`` (Table 6).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as nnf
from torch import nn

from tsdiff.diffusion.parameterization import check_parameterization
from tsdiff.diffusion.schedules import CosineSchedule
from tsdiff.models.baselines import fit_point_model
from tsdiff.nets.timediff import (
    ARLinear,
    ConditionNet,
    TimeDiffDenoiser,
    instance_denormalize,
    instance_normalize,
)

__all__ = ["TimeDiff", "mixup_mask"]

log = logging.getLogger(__name__)

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


class _RestoreBestWeights(pl.Callback):
    """Keep the weights of the best ``monitor`` value in memory; load them back when training ends
    (``on_train_end`` runs before the ``on_fit_end`` checkpoint of the train task)."""

    def __init__(self, monitor: str = "val/loss"):
        self.monitor = monitor
        self.best = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best:
            self.best = value
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)
            log.info("TimeDiff: restored the weights of the best %s = %.4f", self.monitor, self.best)


class TimeDiff(pl.LightningModule):
    """TimeDiff system: owns ``F`` (condition_net), ``M_ar`` (ar_model) and the denoiser, the schedule and
    the loss. Batches are ``{"lookback": (B, L, C), "future": (B, H, C)}``.

    ``lookback``, ``horizon`` and ``n_channels`` are data facts: the train task passes them from
    ``datamodule.model_kwargs()``. Networks can be injected (``denoiser=``, ``condition_net=``,
    ``ar_model=``); by default they are built from the size hyperparameters (Tables 10-11:
    ``hidden = d' = d'' = 256``, Conv1d k=3 -> BatchNorm -> LeakyReLU(0.1) -> Dropout(0.1)).
    """

    def __init__(
        self,
        lookback: int | None = None,
        horizon: int | None = None,
        n_channels: int | None = None,
        *,
        hidden: int = 256,
        cond_hidden: int = 256,
        n_cond_blocks: int = 2,
        n_proj_blocks: int = 2,
        n_encoder_blocks: int = 2,
        n_decoder_blocks: int = 2,
        step_sinusoid_dim: int = 128,
        step_hidden_dim: int = 128,
        dropout: float = 0.1,
        decoder_residual: bool = True,
        num_timesteps: int = 100,
        beta_start: float = 1e-4,
        beta_end: float = 0.1,
        parameterization: str = "x0",
        future_mixup: bool = True,
        mixup: str = "soft",
        mixup_tau: float = 0.5,
        mixup_segment_mean: float = 3.0,
        use_ar: bool = True,
        ar_pretrain_epochs: int = 20,
        ar_lr: float = 1e-3,
        freeze_ar: bool = False,
        norm_eps: float = 1e-3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        default_solver: str = "dpm_solver++",
        default_steps: int = 20,
        early_stopping_patience: int | None = 10,
        denoiser: nn.Module | None = None,
        condition_net: nn.Module | None = None,
        ar_model: nn.Module | None = None,
    ):
        super().__init__()
        missing = [k for k, v in (("lookback", lookback), ("horizon", horizon), ("n_channels", n_channels)) if v is None]
        if missing:
            raise ValueError(
                f"TimeDiff needs the data facts {missing}: pass them (model.lookback=96 ...) or let the train task "
                f"supply them with instantiate(cfg.model, **datamodule.model_kwargs())"
            )
        check_parameterization(parameterization)
        if parameterization not in ("x0", "eps"):
            raise ValueError(f"TimeDiff predicts 'x0' (the paper) or 'eps' (Table 6 ablation), got {parameterization!r}")
        if mixup not in MIXUP_KINDS:
            raise ValueError(f"mixup={mixup!r} is unknown; choose one of {', '.join(MIXUP_KINDS)}")
        if norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0 (it bounds the division by a flat window's std), got {norm_eps}")
        self.save_hyperparameters(ignore=["denoiser", "condition_net", "ar_model"])
        self.lookback, self.horizon, self.n_channels = int(lookback), int(horizon), int(n_channels)
        self.schedule = CosineSchedule(num_timesteps, beta_start=beta_start, beta_end=beta_end)
        self.parameterization = parameterization
        self.default_solver = default_solver
        c = self.n_channels
        self.condition_net = condition_net if condition_net is not None else ConditionNet(
            c, self.lookback, self.horizon, hidden=cond_hidden, n_blocks=n_cond_blocks, dropout=dropout)
        self.ar_model = None
        if use_ar:
            self.ar_model = ar_model if ar_model is not None else ARLinear(c, self.lookback, self.horizon)
            if freeze_ar:
                self.ar_model.requires_grad_(False)
        cond_channels = 2 * c if use_ar else c
        self.denoiser = denoiser if denoiser is not None else TimeDiffDenoiser(
            c, self.horizon, cond_channels, hidden=hidden, n_proj_blocks=n_proj_blocks,
            n_encoder_blocks=n_encoder_blocks, n_decoder_blocks=n_decoder_blocks,
            step_sinusoid_dim=step_sinusoid_dim, step_hidden_dim=step_hidden_dim, dropout=dropout,
            residual=decoder_residual)
        self.register_buffer("ar_pretrained", torch.tensor(False))
        self._train_gen: torch.Generator | None = None
        self._val_gen: torch.Generator | None = None

    # ------------------------------------------------------------------ denoiser contract
    @property
    def sample_shape(self) -> tuple[int, int]:
        return (self.horizon, self.n_channels)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x_theta(x^k, k | c)`` (or ``eps_theta``): ``x`` ``(B, H, C)``, ``t`` ``(B,)`` step indices,
        ``cond = {"c": (B, H, cond_channels)}`` from :meth:`condition`."""
        if not isinstance(cond, dict) or "c" not in cond:
            raise TypeError(
                "TimeDiff is a conditional forecaster: denoise() needs cond={'c': model.condition(lookback)}. "
                "Use model.forecast(lookback) or `python cmd/forecast.py` instead of unconditional sampling."
            )
        return self.denoiser(x, self.schedule.network_time(t), cond["c"])

    # ------------------------------------------------------------------ condition (Sec. 3.2)
    def normalize(self, lookback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instance normalization of the lookback; returns ``(normalized, mean, std)``."""
        return instance_normalize(lookback, self.hparams.norm_eps)

    def condition(self, lookback_n: torch.Tensor, future_n: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """``c`` of eq. (13) from a *normalized* lookback; future mixup (eq. 14) only when the module is
        training, ``future_mixup`` is on and the normalized future is given; eq. (15) otherwise."""
        z = self.condition_net(lookback_n)
        if self.training and self.hparams.future_mixup and future_n is not None:
            m = mixup_mask(tuple(z.shape), self.hparams.mixup, self.hparams.mixup_tau,
                           self.hparams.mixup_segment_mean, generator=generator, device=z.device)
            z = m * z + (1.0 - m) * future_n
        if self.ar_model is None:
            return z
        return torch.cat([z, self.ar_model(lookback_n)], dim=-1)

    # ------------------------------------------------------------------ loss (Alg. 1, eq. 19)
    def diffusion_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        lookback, future = self._unpack(batch)
        lookback_n, mean, std = self.normalize(lookback)
        future_n = (future - mean) / std
        b = future.shape[0]
        gen_device = generator.device if generator is not None else future.device
        t = self.schedule.sample_training_times(b, device=future.device, generator=generator)
        noise = torch.randn(future_n.shape, generator=generator, device=gen_device).to(future.device)
        x_t = self.schedule.q_sample(future_n, t, noise)
        c = self.condition(lookback_n, future_n, generator)
        pred = self.denoise(x_t, t, {"c": c})
        target = future_n if self.parameterization == "x0" else noise
        return nnf.mse_loss(pred, target)

    def _unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, dict) or "lookback" not in batch or "future" not in batch:
            raise TypeError(
                "TimeDiff batches are dicts {'lookback': (B, L, C), 'future': (B, H, C)}; use "
                "tsdiff.data.forecasting.ForecastingDataModule (datamodule=forecast_*)"
            )
        lookback, future = batch["lookback"], batch["future"]
        want_lb, want_fut = (self.lookback, self.n_channels), (self.horizon, self.n_channels)
        if lookback.ndim != 3 or tuple(lookback.shape[1:]) != want_lb or future.ndim != 3 or tuple(future.shape[1:]) != want_fut:
            raise ValueError(
                f"batch shapes lookback {tuple(lookback.shape)} / future {tuple(future.shape)} do not match the model "
                f"(B, {self.lookback}, {self.n_channels}) / (B, {self.horizon}, {self.n_channels}); the datamodule's "
                f"lookback/horizon/channels must be the ones the model was built with"
            )
        return lookback, future

    def _generator(self, offset: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(self.hparams.seed) + offset)
        return gen

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        self._train_gen = self._generator(0)
        if self.ar_model is not None and not bool(self.ar_pretrained):
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None:
                raise RuntimeError(
                    "TimeDiff's AR model must be pretrained before diffusion training (Sec. 3.2.2) but the trainer has "
                    "no datamodule. Call model.on_datamodule_ready(datamodule) or model.pretrain_ar(train_loader) "
                    "before trainer.fit, or set model.ar_pretrain_epochs=0 to skip it."
                )
            self.on_datamodule_ready(dm)

    def on_datamodule_ready(self, datamodule: Any) -> None:
        """Pretrain the AR model on ``datamodule``'s training windows (called by the train task)."""
        if self.ar_model is None or bool(self.ar_pretrained):
            return
        if getattr(datamodule, "_series", None) is None and hasattr(datamodule, "setup"):
            datamodule.setup("fit")
        self.pretrain_ar(datamodule.train_dataloader())

    def pretrain_ar(self, train_loader: Iterable[dict[str, torch.Tensor]], epochs: int | None = None) -> dict[str, Any]:
        """Fit ``M_ar`` by minimising ``||z_ar - x_future||^2`` in the normalized space (Sec. 3.2.2)."""
        if self.ar_model is None:
            raise RuntimeError("use_ar=false: this TimeDiff has no AR model to pretrain")
        epochs = int(self.hparams.ar_pretrain_epochs if epochs is None else epochs)
        if epochs == 0:
            log.warning("TimeDiff: ar_pretrain_epochs=0, the AR model starts from its random initialization")
            return {"train_loss": []}
        was_frozen = not any(p.requires_grad for p in self.ar_model.parameters())
        self.ar_model.requires_grad_(True)
        history = fit_point_model(self.ar_model, train_loader, epochs=epochs, lr=self.hparams.ar_lr,
                                  loss_space="normalized", eps=self.hparams.norm_eps)
        self.ar_model.requires_grad_(not was_frozen)
        self.ar_pretrained.fill_(True)
        log.info("TimeDiff AR pretraining: loss %.4f -> %.4f over %d epochs",
                 history["train_loss"][0], history["train_loss"][-1], epochs)
        return history

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._train_gen is None or self._train_gen.device != self.device:
            self._train_gen = self._generator(0)
        loss = self.diffusion_loss(batch, self._train_gen)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["future"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        # the same steps and noise every epoch, so val/loss moves only with the weights (early stopping)
        self._val_gen = self._generator(1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._val_gen is None:
            self._val_gen = self._generator(1)
        loss = self.diffusion_loss(batch, self._val_gen)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["future"].shape[0])
        return loss

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and "val/loss" in self.trainer.callback_metrics:
            log.info("TimeDiff epoch %d: val/loss %.4f", self.current_epoch, float(self.trainer.callback_metrics["val/loss"]))

    def configure_callbacks(self):
        """Early stopping on ``val/loss`` (Sec. 4.1: "training with early stopping") and a restore of the
        best-val weights at the end of training, so the checkpoint written at fit end is the best one.
        ``early_stopping_patience=null`` trains for the trainer's full ``max_epochs``."""
        patience = self.hparams.early_stopping_patience
        if patience is None:
            return []
        from pytorch_lightning.callbacks import EarlyStopping  # noqa: PLC0415

        return [EarlyStopping(monitor="val/loss", mode="min", patience=int(patience)), _RestoreBestWeights("val/loss")]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------ forecasting (Alg. 2)
    def forecast(
        self,
        lookback: torch.Tensor | np.ndarray,
        num_samples: int = 10,
        solver: str | None = None,
        steps: int | None = None,
        seed: int | None = 0,
        sample_batch_size: int = 640,
        solver_kwargs: dict[str, Any] | None = None,
        return_stats: bool = False,
    ):
        """Sample ``num_samples`` forecasts for each window: returns ``(S, N, H, C)`` in the lookback's space.

        The condition is computed once per window (eval mode: ``z_mix = F(x)``), repeated ``S`` times and
        handed to the shared DiffusionSampler; the samples are de-normalized with each window's lookback
        statistics. The paper's point forecast is the mean over ``S = 10`` samples.
        """
        from tsdiff.sampling import DiffusionSampler  # noqa: PLC0415 - keeps model import light

        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        x = torch.as_tensor(np.asarray(lookback) if not isinstance(lookback, torch.Tensor) else lookback)
        x = x.to(device=self.device, dtype=torch.float32)
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.lookback, self.n_channels):
            raise ValueError(
                f"lookback must be (N, {self.lookback}, {self.n_channels}) windows for this model, got {tuple(x.shape)}"
            )
        solver = solver or self.default_solver
        if steps is None:  # ancestral sampling walks every training step (Alg. 2); fast solvers use default_steps
            steps = self.schedule.num_timesteps if solver == "ddpm" else int(self.hparams.default_steps)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                lookback_n, mean, std = self.normalize(x)
                cond = {"c": self.condition(lookback_n).repeat_interleave(num_samples, dim=0)}
            sampler = DiffusionSampler(model=self, solver=solver, solver_kwargs=solver_kwargs,
                                       sample_batch_size=sample_batch_size, progress=False, device=self.device)
            samples, stats = sampler.sample(x.shape[0] * num_samples, steps, cond=cond, seed=seed, return_stats=True)
        finally:
            self.train(was_training)
        n = x.shape[0]
        samples = samples.reshape(n, num_samples, self.horizon, self.n_channels).transpose(0, 1)
        out = instance_denormalize(samples, mean.unsqueeze(0), std.unsqueeze(0))
        return (out, stats) if return_stats else out
