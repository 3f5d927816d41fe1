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

Departures from the paper (switches; the Python defaults are the paper's / the first implementation's,
so older checkpoints load unchanged; ``conf/model/timediff.yaml`` turns them on)
------------------------------------------------------------------------------------------------
Measured on energy (L=144, H=24, width 128, val MSE of 2-4 sample means): with the paper's layout the
forecast is essentially ``F(x)`` - the decoder leans on ``z_mix``, which holds the truth in training - and
``F``, a conv net trained only through the diffusion loss, stayed near or above the AR model it is given
(val 0.26-0.27 vs AR 0.258), while the AR weights, trained on by the diffusion loss, drifted to val MSE
0.9 as a forecaster of their own. A residual on ``z_ar`` instead of ``z_mix`` did not help (0.29): the
decoder still follows ``z_mix``.

* ``ar_skip``: ``F(x) = z_ar + F_net(x)``, i.e. the conditioning network *refines* the AR forecast, so
  the autoregressive initialization reaches the branch the prediction actually follows. ``z_ar`` is
  still concatenated into ``c`` (eq. 13). Val MSE 0.240-0.246 instead of 0.26-0.27.
* ``zero_init``: ``F_net``'s last layer and the decoder's last convolution start at zero, so the untrained
  model forecasts exactly ``z_ar`` (with ``ar_skip``) instead of ``z_ar`` plus random-weight noise.
* ``ema_decay``: an exponential moving average of the weights is validated, kept and sampled from
  (:meth:`ema_weights`; the restore callback loads the averaged weights at the end of training).
* ``select_by="val_forecast"``: early stopping and the best-weights restore watch the MSE of a cheap
  DPM-Solver++ forecast on ``val_forecast_windows`` val windows instead of the diffusion loss, which
  keeps falling while the forecast gets worse: the val forecast MSE is best after ~400-600 steps and
  then rises. A likely cause: in training ``z_mix - z_ar`` is mostly ``(1 - m)(x0 - z_ar)``, so the
  decoder learns to amplify it; at test time it amplifies ``F_net``'s correction instead (the forecast
  ends 0.005 above ``z_ar + F_net`` alone). Taking ``z_ar`` out of ``c`` removed that gap but made the
  whole model worse (0.26-0.28), so ``c`` stays as in eq. (13).

Tried and dropped (energy, same budget): future mixup off (val 0.27-0.71, unstable), mixup on only half
the windows (0.5-0.9), ``m`` as an extra input channel (0.31-0.40), a lower LR (5e-4: no change),
``freeze_ar`` with ``ar_skip`` (test still above AR). With all of the above the multivariate model stays
2-3% behind the AR model alone on the energy *test* windows (val is 3-5% ahead) and longer training
does not help; channel independence (next section) is what closes that gap.

Channel independence (``channel_independent``, the paper's Appendix C / Table 12)
-------------------------------------------------------------------------------
``F`` and the denoiser become univariate networks (``d = 1``) applied to every variable with shared
weights (:class:`~tsdiff.nets.timediff.PerChannel`, :class:`~tsdiff.nets.timediff.PerChannelDenoiser`);
``M_ar`` keeps its per-variable weights, and ``c`` is still ``[z_mix, z_ar]`` per variable. Training
draws ``ci_channels_per_step`` distinct variables per window and step (null: all), which keeps a step's
cost near the multivariate model's; sampling runs every variable. Why: on energy (28 variables) the
multivariate conv ``F`` memorises cross-variable patterns of the training period - trained directly on
the forecast MSE it went from 0.2545 (the AR model) to 0.29-0.51 test MSE within 250-1500 steps at
width 32 or 128 - while the channel-independent ``F`` (width 32) reached 0.248 after 250 steps. Inside
TimeDiff (width 32, ``conf/model/timediff_ci.yaml``, energy budget of ``+experiment=timediff_energy``)
test MSE: AR model alone 0.2545, ``F`` alone 0.2515, TimeDiff 0.2476; the multivariate width-128 model
0.260. The diffusion part now improves on ``F`` instead of amplifying it (see ``ar_skip`` above).
Tried with it and dropped: future mixup on only a share of the training windows (the others see the
inference-time ``z_mix = F(x)``), to make the samples spread: default energy budget, 64 windows, share
0.5 -> MSE 0.2465, 80% coverage 1.8%; 0.8 -> 0.2469, 6.3%; all windows (kept) 0.2442, 1.0%.

Samples hardly spread (80% interval coverage below 1%): the x0-model reads the forecast from ``c`` and
nearly ignores ``x^k``, so the 10-sample mean is close to one deterministic forecast and CRPS ~ MAE. This
is how TimeDiff's x0 denoiser with future mixup behaves here (it was so before these changes), not a
sampler fault; the point-forecast MSE the paper reports is unaffected.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

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
    PerChannel,
    PerChannelDenoiser,
    TimeDiffDenoiser,
    instance_denormalize,
    instance_normalize,
)

__all__ = ["TimeDiff", "mixup_mask"]

log = logging.getLogger(__name__)

MIXUP_KINDS = ("soft", "hard", "segment")
SELECT_BY = ("val_forecast", "val_loss")


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


def _gather_channels(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """``x[b, :, channels[b]]`` for every window ``b``: ``(B, T, C)``, ``(B, k)`` -> ``(B, T, k)``."""
    return x.gather(2, channels[:, None, :].expand(-1, x.shape[1], -1))


class _RestoreBestWeights(pl.Callback):
    """Keep the weights of the best ``monitor`` value in memory; load them back when training ends
    (``on_train_end`` runs before the ``on_fit_end`` checkpoint of the train task).

    The weights kept are the ones validation scored: the EMA weights when ``ema_decay`` is set
    (:meth:`TimeDiff.averaged_state_dict`). Without any validation result the final EMA weights are
    loaded, so a trained TimeDiff always forecasts with the averaged weights.
    """

    def __init__(self, monitor: str = "val/loss"):
        self.monitor = monitor
        self.best = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _state(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        getter = getattr(pl_module, "averaged_state_dict", pl_module.state_dict)
        return {k: v.detach().to("cpu", copy=True) for k, v in getter().items()}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best:
            self.best = value
            self.state = self._state(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)
            log.info("TimeDiff: restored the weights of the best %s = %.4f", self.monitor, self.best)
        else:
            pl_module.load_state_dict(self._state(pl_module))
        reset = getattr(pl_module, "reset_ema", None)
        if reset is not None:
            reset()


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
        ar_skip: bool = False,
        zero_init: bool = False,
        num_timesteps: int = 100,
        beta_start: float = 1e-4,
        beta_end: float = 0.1,
        parameterization: str = "x0",
        future_mixup: bool = True,
        mixup: str = "soft",
        mixup_tau: float = 0.5,
        mixup_segment_mean: float = 3.0,
        use_ar: bool = True,
        channel_independent: bool = False,
        ci_channels_per_step: int | None = None,
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
        ema_decay: float | None = None,
        select_by: str = "val_loss",
        val_forecast_windows: int = 64,
        val_forecast_samples: int = 2,
        val_forecast_steps: int = 10,
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
        if select_by not in SELECT_BY:
            raise ValueError(f"select_by={select_by!r} is unknown; choose one of {', '.join(SELECT_BY)}")
        if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (null or 0: no weight averaging), got {ema_decay}")
        if ci_channels_per_step is not None and (not isinstance(ci_channels_per_step, int) or ci_channels_per_step < 1):
            raise ValueError(f"ci_channels_per_step must be a positive integer or null (all channels), got {ci_channels_per_step!r}")
        if norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0 (it bounds the division by a flat window's std), got {norm_eps}")
        self.save_hyperparameters(ignore=["denoiser", "condition_net", "ar_model"])
        self.lookback, self.horizon, self.n_channels = int(lookback), int(horizon), int(n_channels)
        self.schedule = CosineSchedule(num_timesteps, beta_start=beta_start, beta_end=beta_end)
        self.parameterization = parameterization
        self.default_solver = default_solver
        c = self.n_channels
        ci = bool(channel_independent)
        net_c = 1 if ci else c  # channel independence: univariate networks shared by every variable
        if condition_net is None:
            condition_net = ConditionNet(net_c, self.lookback, self.horizon, hidden=cond_hidden,
                                         n_blocks=n_cond_blocks, dropout=dropout)
            condition_net = PerChannel(condition_net) if ci else condition_net
        self.condition_net = condition_net
        self.ar_model = None
        if use_ar:
            self.ar_model = ar_model if ar_model is not None else ARLinear(c, self.lookback, self.horizon)
            if freeze_ar:
                self.ar_model.requires_grad_(False)
        groups = 2 if use_ar else 1  # c = [z_mix, z_ar] (eq. 13) or [z_mix]
        if denoiser is None:
            denoiser = TimeDiffDenoiser(
                net_c, self.horizon, groups * net_c, hidden=hidden, n_proj_blocks=n_proj_blocks,
                n_encoder_blocks=n_encoder_blocks, n_decoder_blocks=n_decoder_blocks,
                step_sinusoid_dim=step_sinusoid_dim, step_hidden_dim=step_hidden_dim, dropout=dropout,
                residual=decoder_residual)
            denoiser = PerChannelDenoiser(denoiser) if ci else denoiser
        self.denoiser = denoiser
        if zero_init:
            for net in (self.condition_net, self.denoiser):
                if hasattr(net, "zero_output_"):
                    net.zero_output_()
        self.register_buffer("ar_pretrained", torch.tensor(False))
        self._ema: dict[str, torch.Tensor] | None = None
        self._ema_backup: dict[str, torch.Tensor] | None = None
        self._val_windows: tuple[torch.Tensor, torch.Tensor] | None = None
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
                  generator: torch.Generator | None = None, channels: torch.Tensor | None = None) -> torch.Tensor:
        """``c`` of eq. (13) from a *normalized* lookback; future mixup (eq. 14) only when the module is
        training, ``future_mixup`` is on and the normalized future is given; eq. (15) otherwise.

        ``channels`` ``(B, k)`` (channel-independent training only) keeps ``k`` variables of each window:
        the AR model, whose weights are per variable, sees the whole window; ``F`` and the returned ``c``
        only the kept variables. ``future_n`` must then hold the kept variables already."""
        z_ar = self.ar_model(lookback_n) if self.ar_model is not None else None
        if channels is not None:
            lookback_n = _gather_channels(lookback_n, channels)
            z_ar = _gather_channels(z_ar, channels) if z_ar is not None else None
        z = self.condition_net(lookback_n)
        if z_ar is not None and self.hparams.ar_skip:  # (ignored when use_ar=false)
            z = z + z_ar  # F = z_ar + F_net: F refines the AR forecast
        if self.training and self.hparams.future_mixup and future_n is not None:
            m = mixup_mask(tuple(z.shape), self.hparams.mixup, self.hparams.mixup_tau,
                           self.hparams.mixup_segment_mean, generator=generator, device=z.device)
            z = m * z + (1.0 - m) * future_n
        return z if z_ar is None else torch.cat([z, z_ar], dim=-1)

    # ------------------------------------------------------------------ loss (Alg. 1, eq. 19)
    def diffusion_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        lookback, future = self._unpack(batch)
        lookback_n, mean, std = self.normalize(lookback)
        future_n = (future - mean) / std
        b = future.shape[0]
        gen_device = generator.device if generator is not None else future.device
        channels = self._training_channels(b, generator, future.device)
        if channels is not None:
            future_n = _gather_channels(future_n, channels)
        t = self.schedule.sample_training_times(b, device=future.device, generator=generator)
        noise = torch.randn(future_n.shape, generator=generator, device=gen_device).to(future.device)
        x_t = self.schedule.q_sample(future_n, t, noise)
        c = self.condition(lookback_n, future_n, generator, channels)
        pred = self.denoise(x_t, t, {"c": c})
        target = future_n if self.parameterization == "x0" else noise
        return nnf.mse_loss(pred, target)

    def _training_channels(self, batch_size: int, generator: torch.Generator | None,
                           device: torch.device) -> torch.Tensor | None:
        """Channel-independent training on a budget: ``ci_channels_per_step`` distinct variables drawn
        per window (``(B, k)`` indices), or ``None`` for all of them (and always outside CI mode)."""
        k = self.hparams.ci_channels_per_step
        if not self.hparams.channel_independent or k is None or k >= self.n_channels:
            return None
        gen_device = generator.device if generator is not None else device
        order = torch.rand((batch_size, self.n_channels), generator=generator, device=gen_device).argsort(dim=1)
        return order[:, : int(k)].to(device)

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
        self._val_windows = None
        if self.hparams.select_by == "val_forecast" and not hasattr(getattr(self.trainer, "datamodule", None), "arrays"):
            raise RuntimeError(
                "TimeDiff select_by=val_forecast scores forecasts on val windows from datamodule.arrays('val'), but the "
                "trainer has no such datamodule. Fit with a ForecastingDataModule (datamodule=forecast_*) or set "
                "model.select_by=val_loss."
            )
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

    # ------------------------------------------------------------------ weight averaging (EMA)
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step ``ema <- decay * ema + (1 - decay) * weights`` over the trainable parameters;
        the first call starts the average at the current weights. No-op when ``ema_decay`` is null/0."""
        decay = self.hparams.ema_decay
        if not decay:
            return
        params = {k: p for k, p in self.named_parameters() if p.requires_grad}
        if self._ema is None or self._ema.keys() != params.keys():
            self._ema = {k: p.detach().clone() for k, p in params.items()}
            return
        for k, p in params.items():
            self._ema[k].lerp_(p.detach(), 1.0 - float(decay))

    def reset_ema(self) -> None:
        """Forget the running average (it restarts from the current weights at the next step)."""
        self._ema = None

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` with the EMA weights in place of the trainable parameters (BatchNorm
        statistics and frozen weights are the live ones); the plain ``state_dict()`` without EMA."""
        state = self.state_dict()
        if self._ema is not None and self._ema_backup is None:
            state.update({k: v.detach().clone() for k, v in self._ema.items()})
        return state

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Evaluate with the EMA weights inside the block; the live weights come back afterwards."""
        self._swap_in_ema()
        try:
            yield
        finally:
            self._swap_out_ema()

    @torch.no_grad()
    def _swap_in_ema(self) -> None:
        if self._ema is None or self._ema_backup is not None:
            return
        params = dict(self.named_parameters())
        self._ema_backup = {k: params[k].detach().clone() for k in self._ema}
        for k, v in self._ema.items():
            params[k].copy_(v)

    @torch.no_grad()
    def _swap_out_ema(self) -> None:
        if self._ema_backup is None:
            return
        params = dict(self.named_parameters())
        for k, v in self._ema_backup.items():
            params[k].copy_(v)
        self._ema_backup = None

    # ------------------------------------------------------------------ validation and model selection
    def on_validation_epoch_start(self) -> None:
        # the same steps and noise every epoch, so val/loss moves only with the weights (early stopping)
        self._val_gen = self._generator(1)
        self._swap_in_ema()  # validation scores the weights that will be kept: the averaged ones

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._val_gen is None:
            self._val_gen = self._generator(1)
        loss = self.diffusion_loss(batch, self._val_gen)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["future"].shape[0])
        return loss

    def _validation_windows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``val_forecast_windows`` non-overlapping val windows spread over the split (cached)."""
        if self._val_windows is None:
            arrays = getattr(getattr(self.trainer, "datamodule", None), "arrays", None)
            if arrays is None:
                return None
            lookback, future = arrays("val", max_windows=int(self.hparams.val_forecast_windows))
            self._val_windows = (torch.as_tensor(lookback), torch.as_tensor(future))
        return self._val_windows

    def validation_forecast_mse(self, lookback: torch.Tensor, future: torch.Tensor) -> float:
        """MSE of the mean of ``val_forecast_samples`` DPM-Solver++ forecasts (``val_forecast_steps``
        steps, fixed seed) in the data's space: the quantity the test table reports, at a fraction of
        its cost."""
        samples = self.forecast(lookback, num_samples=int(self.hparams.val_forecast_samples),
                                solver="dpm_solver++", steps=int(self.hparams.val_forecast_steps),
                                seed=int(self.hparams.seed) + 2)
        return float(((samples.mean(0) - future.to(samples)) ** 2).mean())

    def on_validation_epoch_end(self) -> None:
        try:
            if not self.trainer.sanity_checking and self.hparams.select_by == "val_forecast":
                windows = self._validation_windows()
                if windows is not None:
                    self.log("val/forecast_mse", self.validation_forecast_mse(*windows))
            if not self.trainer.sanity_checking and "val/loss" in self.trainer.callback_metrics:
                metrics = self.trainer.callback_metrics
                log.info("TimeDiff epoch %d: val/loss %.4f%s", self.current_epoch, float(metrics["val/loss"]),
                         f", val/forecast_mse {float(metrics['val/forecast_mse']):.4f}"
                         if "val/forecast_mse" in metrics else "")
        finally:
            self._swap_out_ema()

    @property
    def selection_metric(self) -> str:
        """What early stopping and the best-weights restore watch: the val forecast MSE (default) or the
        diffusion val loss (``select_by``)."""
        return "val/forecast_mse" if self.hparams.select_by == "val_forecast" else "val/loss"

    def configure_callbacks(self):
        """Early stopping (Sec. 4.1: "training with early stopping") on :attr:`selection_metric` and a
        restore of the best-scored (EMA) weights at the end of training, so the checkpoint written at fit
        end is the best one. ``early_stopping_patience=null`` trains for the trainer's full
        ``max_epochs`` and still keeps the best-scored weights."""
        callbacks: list[pl.Callback] = [_RestoreBestWeights(self.selection_metric)]
        patience = self.hparams.early_stopping_patience
        if patience is not None:
            from pytorch_lightning.callbacks import EarlyStopping  # noqa: PLC0415

            callbacks.insert(0, EarlyStopping(monitor=self.selection_metric, mode="min", patience=int(patience)))
        return callbacks

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
