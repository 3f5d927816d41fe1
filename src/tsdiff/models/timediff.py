"""TimeDiff (Shen & Kwok, "Non-autoregressive Conditional Diffusion Models for Time Series Prediction",
ICML 2023) as a LightningModule: the system owns ``F`` (condition_net), ``M_ar`` (ar_model), the denoiser,
the schedule and the loss. Its networks are injected (``conf/model/timediff.yaml`` builds them with
:mod:`tsdiff.nets.timediff`); its training recipe - AR pretraining, weight averaging, model selection,
early stopping - is a list of callbacks (:meth:`TimeDiff.configure_callbacks`,
:mod:`tsdiff.models.callbacks`); forecasting is :func:`tsdiff.sampling.forecast.sample_forecasts`.

Shapes: lookback ``(B, L, C)``, future ``(B, H, C)``; the paper writes them ``d x L`` and ``d x H``.

* **Instance normalization** (Sec. 4.1): each lookback is centred and scaled per variable by its own
  statistics; the future is scaled with the lookback's (training target) and forecasts are mapped back
  with them (:meth:`TimeDiff.decode_forecast`).
* **Condition** ``c = concat(z_mix, z_ar)`` (eq. 13): ``z_mix = m ⊙ F(x) + (1 - m) ⊙ x_future`` while
  training (future mixup, eq. 14), ``z_mix = F(x)`` otherwise (eq. 15); ``z_ar`` is the AR model (eq. 16).
* **Diffusion** over the future only (Sec. 3.1), K = 100, cosine betas clipped to [1e-4, 0.1]; the
  denoiser predicts ``x0`` (eq. 19; ``parameterization="eps"`` is Table 6's ablation).
* **Ablations** (Sec. 4.3): ``future_mixup``, ``mixup`` / ``mixup_tau`` (Table 5), ``use_ar`` (Table 4).
* **Departures** (the Python defaults are the paper's; the config turns them on): ``ar_skip``
  (``F = z_ar + F_net``), ``zero_init``, ``ema_decay``, ``select_by="val_crps"``, channel
  independence (Appendix C); ``conf/experiment/timediff_etth1.yaml`` adds ``ar_fit="ridge"`` + ``freeze_ar``:
  ``M_ar`` is pretrained (Sec. 3.2.2) by the closed-form minimiser of the same l2 loss plus a ridge penalty
  chosen on val, then kept fixed - 20 epochs of Adam stop short of that minimum, and the diffusion loss pulls
  the weights away from it. Why, with the measurements: ``docs/timediff.md``.
* **Calibration** (issue 16; the Python defaults are the paper's, the config turns them on): ``mixup_source="diffused"`` mixes the diffused
  future ``x^k`` instead of the clean one into ``z_mix``, so the condition carries no more of the truth
  than the denoiser's own input (with clean mixup the x0-denoiser reads the truth from ``c`` and learns to
  ignore ``x^k``: its samples do not spread). ``gaussian_skip`` writes the x0-prediction as the posterior
  mean of a Gaussian ``N(mu, v)`` given ``x^k`` (:meth:`TimeDiff.denoise`), the denoiser emitting ``mu``
  and ``log v``; the unchanged x0 loss (eq. 19) then fits ``v`` to the residual variance, and sampling
  draws spread ``v`` from the first step on. (A per-window, learnt, diagonal cousin of the fixed full-covariance
  skip of :mod:`tsdiff.diffusion.gaussian_skip`.)
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as nnf
from torch import nn

from tsdiff.diffusion.schedules import CosineSchedule, NoiseSchedule
from tsdiff.models.baselines import check_ar_fit
from tsdiff.models.callbacks import EMA, ARPretraining, RestoreBestWeights, ValForecastMSE
from tsdiff.nets.baselines import instance_denormalize, instance_normalize
from tsdiff.nets.timediff import MIXUP_KINDS, draw_channels, gather_channels, mixup_mask

__all__ = ["TimeDiff", "mixup_mask"]

SELECT_BY = ("val_forecast", "val_crps", "val_loss")
MIXUP_SOURCES = ("clean", "diffused")
#: clamp of the predictive log-variance of ``gaussian_skip`` (instance-normalized units)
LOG_VAR_RANGE = (-9.0, 4.0)
#: sizes conf/model/timediff.yaml's network nodes read (``model.hidden=128`` ...); recorded, not used here
NET_SIZE_KEYS = ("hidden", "cond_hidden", "step_sinusoid_dim", "step_hidden_dim")
#: flat keys of configs written before the networks were injected (now inside the network/schedule nodes)
LEGACY_KEYS = ("n_cond_blocks", "n_proj_blocks", "n_encoder_blocks", "n_decoder_blocks", "dropout", "decoder_residual",
               "num_timesteps", "beta_start", "beta_end", "default_solver", "default_steps")
Net = Callable[..., nn.Module] | nn.Module


def _build(net: Net, **data_facts: int) -> nn.Module:
    return net if isinstance(net, nn.Module) else net(**data_facts)


def _check_arguments(lookback, horizon, n_channels, condition_net, denoiser, parameterization, mixup, select_by,
                     ci_channels_per_step, norm_eps, net_sizes) -> None:
    """One-line errors naming the bad argument and the fix."""
    missing = [k for k, v in (("lookback", lookback), ("horizon", horizon), ("n_channels", n_channels)) if v is None]
    if missing:
        raise ValueError(f"TimeDiff needs the data facts {missing}: pass them (model.lookback=96 ...) or let the train "
                         f"task supply them with instantiate(cfg.model, **datamodule.model_kwargs())")
    legacy = sorted(set(net_sizes) & set(LEGACY_KEYS))
    if legacy:
        raise ValueError(f"TimeDiff arguments {legacy} belong to a config written before the networks were injected: "
                         "copy the condition_net/denoiser/ar_model/schedule nodes of conf/model/timediff.yaml into the "
                         "run's config.yaml (its checkpoint loads unchanged), or retrain")
    if condition_net is None or denoiser is None:
        raise ValueError("TimeDiff needs its networks: condition_net= and denoiser= (modules or factories, e.g. "
                         "tsdiff.nets.timediff.condition_network / denoising_network; conf/model/timediff.yaml)")
    if parameterization not in ("x0", "eps"):
        raise ValueError(f"TimeDiff predicts 'x0' (the paper) or 'eps' (Table 6 ablation), got {parameterization!r}")
    checks = [(mixup in MIXUP_KINDS, f"mixup={mixup!r} is unknown; choose one of {', '.join(MIXUP_KINDS)}"),
              (select_by in SELECT_BY, f"select_by={select_by!r} is unknown; choose one of {', '.join(SELECT_BY)}"),
              (ci_channels_per_step is None or (isinstance(ci_channels_per_step, int) and ci_channels_per_step >= 1),
               f"ci_channels_per_step must be a positive integer or null (all channels), got {ci_channels_per_step!r}"),
              (norm_eps > 0, f"norm_eps must be > 0 (it bounds the division by a flat window's std), got {norm_eps}"),
              (set(net_sizes) <= set(NET_SIZE_KEYS), f"unknown TimeDiff arguments {sorted(set(net_sizes) - set(NET_SIZE_KEYS))}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _unpack(batch: Any, lookback_shape: tuple[int, int], future_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, dict) or "lookback" not in batch or "future" not in batch:
        raise TypeError("TimeDiff batches are dicts {'lookback': (B, L, C), 'future': (B, H, C)}; use "
                        "tsdiff.data.forecasting.ForecastingDataModule (datamodule=forecast_*)")
    lookback, future = batch["lookback"], batch["future"]
    if tuple(lookback.shape[1:]) != lookback_shape or tuple(future.shape[1:]) != future_shape:
        raise ValueError(
            f"batch shapes lookback {tuple(lookback.shape)} / future {tuple(future.shape)} do not match the model "
            f"(B, {lookback_shape[0]}, {lookback_shape[1]}) / (B, {future_shape[0]}, {future_shape[1]}); the datamodule's "
            f"lookback/horizon/channels must be the ones the model was built with")
    return lookback, future


class TimeDiff(pl.LightningModule):
    """Batches are ``{"lookback": (B, L, C), "future": (B, H, C)}``.

    Args:
        lookback, horizon, n_channels: data facts (the train task passes ``datamodule.model_kwargs()``).
        condition_net: ``F``, a module or a factory ``(n_channels, lookback, horizon) -> module``.
        denoiser: a module or a factory ``(n_channels, horizon, cond_channels) -> module``, called
            ``denoiser(x, k, c)``; ``cond_channels`` is ``2 C`` (``[z_mix, z_ar]``) or ``C`` without AR.
        ar_model: ``M_ar``, a module or a factory ``(n_channels, lookback, horizon)``; used when ``use_ar``.
        schedule: the discrete schedule (default: cosine, K = 100, betas in [1e-4, 0.1]).
        ar_pretrain_epochs, ar_lr, ar_fit, ar_ridge, ema_decay, select_by, early_stopping_patience,
            val_forecast_*: the
            training recipe, turned into callbacks by :meth:`configure_callbacks`.
    """

    def __init__(self, lookback: int | None = None, horizon: int | None = None, n_channels: int | None = None, *,
                 condition_net: Net | None = None, denoiser: Net | None = None, ar_model: Net | None = None,
                 schedule: NoiseSchedule | None = None,
                 parameterization: str = "x0", future_mixup: bool = True, mixup: str = "soft", mixup_tau: float = 0.5,
                 mixup_source: str = "clean", gaussian_skip: bool = False,
                 mixup_segment_mean: float = 3.0, use_ar: bool = True, ar_skip: bool = False, zero_init: bool = False,
                 channel_independent: bool = False, ci_channels_per_step: int | None = None, freeze_ar: bool = False,
                 norm_eps: float = 1e-3, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                 ar_pretrain_epochs: int = 20, ar_lr: float = 1e-3, ar_fit: str = "adam",
                 ar_ridge: float | list[float] = 0.3, ema_decay: float | None = None,
                 select_by: str = "val_loss", early_stopping_patience: int | None = 10, val_forecast_windows: int = 64,
                 val_forecast_samples: int = 2, val_forecast_steps: int = 10, **net_sizes: int):
        super().__init__()
        _check_arguments(lookback=lookback, horizon=horizon, n_channels=n_channels, condition_net=condition_net,
                         denoiser=denoiser, parameterization=parameterization, mixup=mixup, select_by=select_by,
                         ci_channels_per_step=ci_channels_per_step, norm_eps=norm_eps, net_sizes=net_sizes)
        EMA.check_decay(ema_decay)
        if mixup_source not in MIXUP_SOURCES:
            raise ValueError(f"mixup_source={mixup_source!r} is unknown; choose one of {', '.join(MIXUP_SOURCES)}")
        # plain floats: save_hyperparameters reads this local, and a Hydra ListConfig would not load with weights_only=True
        ar_ridge = check_ar_fit(ar_fit, ar_ridge)
        if gaussian_skip and parameterization != "x0":
            raise ValueError("gaussian_skip shapes the x0-prediction; use parameterization=x0 or gaussian_skip=false")
        self.save_hyperparameters(ignore=["condition_net", "denoiser", "ar_model", "schedule"])
        self.lookback, self.horizon, self.n_channels = int(lookback), int(horizon), int(n_channels)
        self.schedule = schedule if schedule is not None else CosineSchedule(100, beta_start=1e-4, beta_end=0.1)
        self.parameterization = parameterization
        facts = dict(n_channels=self.n_channels, lookback=self.lookback, horizon=self.horizon)
        self.condition_net = _build(condition_net, **facts)  # build order F, M_ar, denoiser fixes the init
        self.ar_model = _build(ar_model, **facts) if use_ar and ar_model is not None else None
        if use_ar and ar_model is None:
            raise ValueError("use_ar=true needs an ar_model (e.g. tsdiff.nets.baselines.ARLinear); or set use_ar=false")
        if self.ar_model is not None and freeze_ar:
            self.ar_model.requires_grad_(False)
        groups = 2 if self.ar_model is not None else 1  # c = [z_mix, z_ar] (eq. 13) or [z_mix]
        extra = {"out_groups": 2} if gaussian_skip else {}  # [mu, log v]
        self.denoiser = _build(denoiser, n_channels=self.n_channels, horizon=self.horizon,
                               cond_channels=groups * self.n_channels, **extra)
        if zero_init:
            for net in (self.condition_net, self.denoiser):
                net.zero_output_()
        self.register_buffer("ar_pretrained", torch.tensor(False))
        self.selection_windows: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generators: dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------ denoiser contract
    @property
    def sample_shape(self) -> tuple[int, int]:
        return (self.horizon, self.n_channels)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x_theta(x^k, k | c)`` (or ``eps_theta``): ``x`` ``(B, H, C)``, ``t`` ``(B,)`` step indices,
        ``cond = {"c": (B, H, cond_channels)}`` from :meth:`condition`."""
        if not isinstance(cond, dict) or "c" not in cond:
            raise TypeError("TimeDiff is a conditional forecaster: denoise() needs cond={'c': model.condition(lookback)}. "
                            "Use tsdiff.sampling.forecast.sample_forecasts(model, lookback) or `python cmd/forecast.py`.")
        out = self.denoiser(x, self.schedule.network_time(t), cond["c"])
        if not self.hparams.gaussian_skip:
            return out
        return self.gaussian_posterior_mean(x, t, out[..., : x.shape[-1]], out[..., x.shape[-1] :])

    def gaussian_posterior_mean(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x^k]`` if ``x0 ~ N(mu, v)`` and ``x^k = a x0 + s eps``: ``mu + a v (x^k - a mu) / (a^2 v + s^2)``.

        The x0 loss is minimised by the true conditional mean; for a Gaussian future that is exactly this
        form with ``v`` the true residual variance, so the loss fits ``v`` (heteroscedastic, per window and
        step) and the reverse process draws from ``N(mu, v)``. ``mu`` may still depend on ``x^k`` (the
        denoiser sees it), which lets the samples depart from the Gaussian shape."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        a = alpha.to(x).view(-1, 1, 1)
        s2 = (sigma.to(x) ** 2).view(-1, 1, 1)
        v = torch.exp(log_var.clamp(*LOG_VAR_RANGE))
        return mu + a * v * (x - a * mu) / (a * a * v + s2)

    def forecast_condition(self, lookback: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Inference condition (eq. 15) of raw lookback windows ``(N, L, C)`` and their statistics, which
        :meth:`decode_forecast` needs to map samples back (the sampling helper calls both)."""
        if lookback.ndim != 3 or tuple(lookback.shape[1:]) != (self.lookback, self.n_channels):
            raise ValueError(f"lookback must be (N, {self.lookback}, {self.n_channels}) windows for this model, "
                             f"got {tuple(lookback.shape)}")
        lookback_n, mean, std = self.normalize(lookback)
        return {"c": self.condition(lookback_n)}, (mean, std)

    def decode_forecast(self, samples: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``(S, N, H, C)`` samples in the normalized space -> the lookback's space."""
        mean, std = stats
        return instance_denormalize(samples, mean.unsqueeze(0), std.unsqueeze(0))

    # ------------------------------------------------------------------ condition (Sec. 3.2) and loss (eq. 19)
    def normalize(self, lookback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instance normalization of the lookback; returns ``(normalized, mean, std)``."""
        return instance_normalize(lookback, self.hparams.norm_eps)

    def condition(self, lookback_n: torch.Tensor, future_n: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, channels: torch.Tensor | None = None) -> torch.Tensor:
        """``c`` of eq. (13) from a *normalized* lookback; future mixup (eq. 14) only when the module is
        training, ``future_mixup`` is on and the normalized future is given; eq. (15) otherwise.

        ``channels`` ``(B, k)`` (channel-independent training) keeps ``k`` variables of each window: the
        AR model, whose weights are per variable, sees the whole window; ``F`` and ``c`` only the kept
        variables (``future_n`` must hold them already)."""
        hp = self.hparams
        z_ar = self.ar_model(lookback_n) if self.ar_model is not None else None
        if channels is not None:
            lookback_n = gather_channels(lookback_n, channels)
            z_ar = gather_channels(z_ar, channels) if z_ar is not None else None
        z = self.condition_net(lookback_n)
        if z_ar is not None and hp.ar_skip:
            z = z + z_ar  # F = z_ar + F_net: F refines the AR forecast
        if self.training and hp.future_mixup and future_n is not None:
            m = mixup_mask(tuple(z.shape), hp.mixup, hp.mixup_tau, hp.mixup_segment_mean, generator=generator, device=z.device)
            z = m * z + (1.0 - m) * future_n  # future_n: clean (eq. 14) or x^k (mixup_source="diffused")
        return z if z_ar is None else torch.cat([z, z_ar], dim=-1)

    def diffusion_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Algorithm 1: diffuse the normalized future to a random step and regress ``x0`` (or ``eps``)."""
        lookback, future = _unpack(batch, (self.lookback, self.n_channels), (self.horizon, self.n_channels))
        lookback_n, mean, std = self.normalize(lookback)
        future_n = (future - mean) / std
        b = future.shape[0]
        gen_device = generator.device if generator is not None else future.device
        k = self.hparams.ci_channels_per_step if self.hparams.channel_independent else None
        channels = draw_channels(b, self.n_channels, k, generator, future.device)  # CI training on a budget
        if channels is not None:
            future_n = gather_channels(future_n, channels)
        t = self.schedule.sample_training_times(b, device=future.device, generator=generator)
        noise = torch.randn(future_n.shape, generator=generator, device=gen_device).to(future.device)
        x_t = self.schedule.q_sample(future_n, t, noise)
        revealed = x_t if self.hparams.mixup_source == "diffused" else future_n
        pred = self.denoise(x_t, t, {"c": self.condition(lookback_n, revealed, generator, channels)})
        return nnf.mse_loss(pred, future_n if self.parameterization == "x0" else noise)

    # ------------------------------------------------------------------ Lightning
    def _generator(self, name: str, offset: int, fresh: bool = False) -> torch.Generator:
        """Seeded generators: training noise (one stream per fit) and validation noise (the same steps and
        noise every epoch, so val/loss moves only with the weights)."""
        gen = self._generators.get(name)
        if fresh or gen is None or gen.device != self.device:
            gen = self._generators[name] = torch.Generator(device=self.device).manual_seed(int(self.hparams.seed) + offset)
        return gen

    def on_datamodule_ready(self, datamodule: Any) -> None:
        """Called by the train task before fitting: take the val windows model selection scores
        (``select_by=val_forecast``) from the datamodule's public ``arrays`` method."""
        if self.hparams.select_by in ("val_forecast", "val_crps"):
            lookback, future = datamodule.arrays("val", max_windows=int(self.hparams.val_forecast_windows))
            self.selection_windows = (torch.as_tensor(lookback), torch.as_tensor(future))

    def on_fit_start(self) -> None:
        self._generator("train", 0, fresh=True)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, self._generator("train", 0))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["future"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._generator("val", 1, fresh=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, self._generator("val", 1))
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["future"].shape[0], sync_dist=True)
        return loss

    @property
    def selection_metric(self) -> str:
        """What early stopping and the best-weights restore watch (``select_by``)."""
        return {"val_forecast": "val/forecast_mse", "val_crps": "val/forecast_crps"}.get(self.hparams.select_by, "val/loss")

    def configure_callbacks(self) -> list[pl.Callback]:
        """The training recipe, in hook order: AR pretraining (Sec. 3.2.2) at fit start; the val forecast
        MSE scored while validation holds the averaged weights (so before :class:`EMA` swaps them back);
        early stopping (Sec. 4.1) on :attr:`selection_metric`; the restore of the best-scored (averaged)
        weights at train end, after EMA's own copy, so the fit-end checkpoint holds the best weights."""
        from pytorch_lightning.callbacks import EarlyStopping  # noqa: PLC0415

        hp = self.hparams
        callbacks: list[pl.Callback] = []
        if self.ar_model is not None:
            callbacks.append(ARPretraining(int(hp.ar_pretrain_epochs), float(hp.ar_lr), eps=float(hp.norm_eps),
                                           fit=str(hp.ar_fit), ridge=hp.ar_ridge))
        if hp.select_by in ("val_forecast", "val_crps"):
            callbacks.append(ValForecastMSE(int(hp.val_forecast_samples), int(hp.val_forecast_steps), seed=int(hp.seed) + 2))
        if hp.early_stopping_patience is not None:
            # strict=False: a budget that ends before the first validation (trainer.max_steps below an epoch) has no
            # metric to check yet; that is not an error
            callbacks.append(EarlyStopping(monitor=self.selection_metric, mode="min", patience=int(hp.early_stopping_patience),
                                           strict=False))
        ema = EMA(float(hp.ema_decay)) if hp.ema_decay else None
        return callbacks + ([ema] if ema else []) + [RestoreBestWeights(self.selection_metric, ema=ema)]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
