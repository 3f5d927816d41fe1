"""Frequency-domain score-based diffusion (Crabbé et al. 2024, "Time Series Diffusion in the Frequency
Domain", arXiv 2402.05933) as a LightningModule.

The system owns its network, its SDE and its loss; sampling belongs to
:class:`~tsdiff.sampling.DiffusionSampler`, which talks to it through the denoiser contract.

Representation (``fourier_transform``)
    ``False``: diffusion on the standardized series ``x`` (batch, length, channels).
    ``True``: diffusion on the frequency representation ``y = dft(x)`` with per-component noise scale
    ``S`` (the paper's noise-scaling diagonal, so that noise stays white in time). Internally the
    diffusion variable is the whitened ``z = y / S`` (an orthogonal transform of ``x``), in which the
    forward noise is white and every tsdiff solver applies unchanged; the network sees ``y_t = S z_t``,
    exactly the paper's ``y_t = alpha_t y_0 + sigma_t S eps``. Samples are returned in the time domain.

Parameterization and loss
    Default (``parameterization="x0"``): the denoiser is preconditioned as in Karras et al. 2022
    (EDM, Table 1), written for ``x_t = alpha x0 + sigma eps`` with ``x~ = x_t / alpha`` and
    ``s = sigma / alpha``:  ``x0_hat = c_skip x~ + c_out F(c_in x~, t)`` with
    ``c_skip = d^2 / (s^2 + d^2)``, ``c_out = s d / sqrt(s^2 + d^2)``, ``c_in = 1 / sqrt(s^2 + d^2)``, where
    ``d`` is the **per-component** standard deviation of the training data in the diffusion variable
    (a buffer fitted in :meth:`fit_data_std` before training and saved in the checkpoint). EDM assumes
    zero-mean data; we precondition around the per-component training mean ``m`` instead
    (``x~ - m`` in place of ``x~``, ``m`` added back to ``x0_hat``), so that ``F``'s target stays of unit
    variance where the mean is far from 0 relative to ``d``: zero-padded or constant positions
    (``d -> 0``) otherwise ask ``F`` for ``m / d`` (measured: val loss 2e5 on zero-padded beats), and the
    mean beat or the mean frequency profile is given to the network instead of learned. ``d`` is floored
    at ``data_std_floor`` times the rms of ``d`` (relative to the data's scale, not an absolute 1e-3). This matters
    here: in the frequency domain the DC component of standardized stock windows has ~25x the variance
    of the other components, and a plain noise predictor must reproduce ``eps ~ x_t`` to within
    ``alpha_1 ~ 0.007`` at high noise, otherwise its errors are amplified by ``1/alpha`` and sampling
    diverges (what we observed before adopting this form). The score follows as
    ``(alpha x0_hat - x_t) / sigma^2`` -- it is still a score model trained by denoising score
    matching: the loss is the x0-MSE weighted by ``1 / c_out^2`` (unit-variance targets for ``F``;
    for small noise this is the usual ``lambda(t) = sigma^2`` DSM weighting, Song et al. 2021, eq. 7).
    ``skip="gaussian"`` replaces the diagonal skip by the exact denoiser of the full-covariance Gaussian
    fitted to the training windows (and ``c_out`` by its posterior std): a zero network output then samples
    that Gaussian, and the network learns only what the data has beyond two moments
    (:mod:`tsdiff.diffusion.gaussian_skip`; measured in the README). ``"diagonal"`` is EDM's form above.
    ``parameterization="eps"`` keeps the reference's plain noise/score network (eps-MSE).
    ``likelihood_weighting=True`` multiplies the loss by ``g(t)^2 / sigma_t^2``, turning the DSM weight
    into ``lambda(t) = g(t)^2`` (Song et al. 2021b, Thm. 1): a tighter likelihood bound, higher variance.

Support clamp (``clip_x0``)
    At sampling time the data prediction is mapped to the time domain, clamped to each channel's range in
    the training windows and mapped back (an orthogonal map, so exact), before the solver uses it. This is
    DDPM's and Diffusion-TS's ``clip_denoised`` (they clamp ``x0_hat`` to [-1, 1], their min-max range),
    written for standardized data and for the frequency domain. It matters for bounded channels with mass on
    a bound (energy's ``lights`` is 0 most of the time: unclamped, 31 % of its sampled values fell below the
    training minimum). The range is per channel, not per position: sliding windows put every value at every
    position, and a per-position box from few windows would be too tight. Training never clamps (the loss sees
    the raw prediction). Runs saved before this option have no range and are never clamped. Off by default:
    on energy it lowers Context-FID but raises the discriminative score, because the clamped values pile up
    on the bounds where the data does not (docs/frequency_diffusion.md, "At paper strength").

Optimisation: AdamW, linear warm-up then cosine decay over the run's optimizer steps, gradient clipping
from the Trainer config, and an exponential moving average of the weights (``ema_decay``, used for
validation and sampling; 0 disables it). The average is the shared :class:`tsdiff.models.callbacks.EMA`
callback (Lightning's ``WeightAveraging``) with the warm-up ``min(decay, (1 + k) / (10 + k))``, so after
``fit`` the module holds the averaged weights (see ``docs/ema.md``); runs saved with the older built-in
average (``net_ema.*`` keys) load with those averaged weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from tsdiff.caching.interface import CacheInterface, as_token_network
from tsdiff.diffusion.fourier import noise_scale, unwhiten, whiten
from tsdiff.diffusion.gaussian_skip import MAX_DIM, GaussianSkip
from tsdiff.diffusion.schedules import NoiseSchedule
from tsdiff.models.callbacks import EMA
from tsdiff.utils import append_dims


def resolve_auto_skip(dim: int, parameterization: str, center: bool) -> str:
    """``skip="auto"``: the Gaussian skip where it applies (x0 parameterization, centred, ``dim <= MAX_DIM``),
    else EDM's diagonal skip, with a warning that names the reason."""
    if parameterization == "x0" and center and dim <= MAX_DIM:
        return "gaussian"
    reason = (f"windows of {dim} values need a {dim} x {dim} covariance (limit {MAX_DIM})" if dim > MAX_DIM
              else "it needs parameterization='x0' and center=true")
    warnings.warn(f"score_model.skip=auto uses the diagonal skip: {reason}", stacklevel=3)
    return "diagonal"


class ScoreModule(pl.LightningModule):
    """Score model over series of shape ``(max_len, n_channels)``.

    Args:
        n_channels, max_len: the data shape (filled in from the datamodule by the train task).
        backbone: a factory ``backbone(n_channels=..., max_len=...) -> nn.Module`` (Hydra ``_partial_``) or
            a ready module mapping ``(x, t) -> x``-shaped output.
        noise_scheduler: the SDE (``VPSDE`` / ``VESDE``) or a discrete schedule.
        fourier_transform: diffuse in the frequency domain (see module docstring).
        likelihood_weighting: weight the loss by ``g(t)^2`` (see module docstring).
        lr, weight_decay, lr_warmup_steps: AdamW with linear warm-up and cosine decay.
        ema_decay: EMA of the weights used at inference (0 disables).
        default_solver: the solver a DiffusionSampler uses when none is named (the reference integrates
            the reverse SDE with Euler–Maruyama).
        default_steps: the number of steps a DiffusionSampler takes when none is given (``sampler=auto``).
        center: precondition around the per-component training mean (see module docstring).
        data_std_floor: floor of ``data_std`` as a fraction of its rms over components.
        skip: ``"diagonal"`` (EDM), ``"gaussian"`` (full-covariance Gaussian denoiser, see module docstring) or
            ``"auto"``: gaussian when ``max_len x n_channels`` is at most
            :data:`~tsdiff.diffusion.gaussian_skip.MAX_DIM` and the parameterization allows it, else diagonal.
        clip_x0: at sampling time, clamp the data prediction to each channel's training range (see the
            module docstring, "Support clamp"); only with ``parameterization="x0"``.
    """

    sampling_settings = ("clip_x0",)  # `cmd/sample.py +model_settings.clip_x0=true` (runs trained with the range)

    def __init__(
        self,
        n_channels: int,
        max_len: int,
        backbone: Callable[..., nn.Module] | nn.Module,
        noise_scheduler: NoiseSchedule,
        fourier_transform: bool = True,
        likelihood_weighting: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 100,
        ema_decay: float = 0.999,
        default_solver: str = "euler_maruyama",
        default_steps: int = 100,
        parameterization: str = "x0",
        center: bool = True,
        data_std_floor: float = 0.01,
        skip: str = "diagonal",
        clip_x0: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "noise_scheduler"])
        if n_channels < 1 or max_len < 1:
            raise ValueError(f"n_channels and max_len must be positive, got {n_channels}, {max_len}")
        if parameterization not in ("x0", "eps"):
            raise ValueError(f"ScoreModule parameterization must be 'x0' (preconditioned) or 'eps', got '{parameterization}'")
        if not 0.0 < data_std_floor <= 1.0:
            raise ValueError(f"data_std_floor must lie in (0, 1] (a fraction of the data's rms std), got {data_std_floor}")
        if skip not in ("diagonal", "gaussian", "auto"):
            raise ValueError(f"skip must be 'diagonal' (EDM), 'gaussian' (full-covariance) or 'auto', got '{skip}'")
        if not isinstance(default_steps, int) or isinstance(default_steps, bool) or default_steps < 1:
            raise ValueError(f"default_steps must be a positive integer, got {default_steps!r}")
        if clip_x0 and parameterization != "x0":
            raise ValueError("clip_x0=true clamps the data prediction, which parameterization='eps' does not make; "
                             "set score_model.clip_x0=false or parameterization=x0")
        if skip == "auto":
            skip = resolve_auto_skip(max_len * n_channels, parameterization, center)
        if skip == "gaussian" and (parameterization != "x0" or not center):
            raise ValueError("skip='gaussian' needs parameterization='x0' and center=true (it is the posterior mean "
                             "of a Gaussian around the training mean); set score_model.skip=diagonal otherwise")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        self.net = backbone if isinstance(backbone, nn.Module) else backbone(n_channels=n_channels, max_len=max_len)
        self.schedule = noise_scheduler
        self.fourier_transform = fourier_transform
        self.likelihood_weighting = likelihood_weighting
        self.default_solver = default_solver
        self.default_steps = default_steps
        self.skip = skip
        self.parameterization = parameterization
        self.sample_shape = (max_len, n_channels)
        self.register_buffer("noise_scale", noise_scale(max_len), persistent=False)
        # per-component mean and std of the training data in the diffusion variable (see fit_data_std)
        self.register_buffer("data_std", torch.ones(max_len, n_channels))
        self.register_buffer("data_mean", torch.zeros(max_len, n_channels))
        self.gaussian_skip = GaussianSkip(max_len, n_channels) if skip == "gaussian" else None
        self.clip_x0 = bool(clip_x0)
        # per-channel range of the training windows in the time domain (the support clamp); +-inf = no clamp
        self.register_buffer("data_min", torch.full((n_channels,), -math.inf))
        self.register_buffer("data_max", torch.full((n_channels,), math.inf))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before mean-centred preconditioning have no data_mean: they were trained with m = 0
        state_dict.setdefault(prefix + "data_mean", torch.zeros_like(self.data_mean))
        # runs saved before the support clamp have no training range: never clamped
        state_dict.setdefault(prefix + "data_min", torch.full_like(self.data_min, -math.inf))
        state_dict.setdefault(prefix + "data_max", torch.full_like(self.data_max, math.inf))
        # runs saved before the shared EMA callback kept the average in `net_ema`: it is what inference used
        legacy = [k for k in state_dict if k.startswith(prefix + "net_ema.")]
        for key in legacy:
            state_dict[prefix + "net." + key[len(prefix) + len("net_ema."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ data statistics
    @torch.no_grad()
    def fit_data_std(self, windows: torch.Tensor) -> None:
        """Set ``data_mean`` and ``data_std`` from training windows ``(N, max_len, n_channels)`` (time domain).

        The std floor is relative (``data_std_floor`` x the rms std over components, at least 1e-6), so a
        constant position or channel gets a finite, scale-aware preconditioning instead of weights ~1e6.
        """
        x = torch.as_tensor(windows, dtype=torch.float32, device=self.data_std.device)
        self.data_min.copy_(x.amin(dim=(0, 1)))
        self.data_max.copy_(x.amax(dim=(0, 1)))
        z = self.encode(x).double()
        std = z.std(dim=0) if len(z) > 1 else torch.zeros_like(z[0])
        floor = max(float(self.hparams.data_std_floor) * float(std.pow(2).mean().sqrt()), 1e-6)
        self.data_std.copy_(std.clamp_min(floor).float())
        self.data_mean.copy_(z.mean(dim=0).float() if self.hparams.center else torch.zeros_like(self.data_mean))
        if self.gaussian_skip is not None:
            self.gaussian_skip.fit(z, floor)

    def on_datamodule_ready(self, datamodule) -> None:
        """Called by the train task before fitting: fit ``data_std`` on the training split."""
        self.fit_data_std(torch.from_numpy(datamodule.train_array("train")))

    # ------------------------------------------------------------------ representation
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Time-domain batch -> diffusion variable (whitened frequency coordinates or ``x`` itself)."""
        return whiten(x) if self.fourier_transform else x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion variable -> time domain (what the sampler returns)."""
        return unwhiten(z) if self.fourier_transform else z

    decode_samples = decode  # the name before the model contract (tsdiff.sampling.contract)

    @property
    def score_network(self) -> nn.Module:
        """The network used for inference (after ``fit`` it holds the EMA weights, see the module docstring)."""
        return self.net

    def network_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the network sees: the paper's representation ``y = S z`` in the frequency domain."""
        return z * self.noise_scale.to(z.dtype) if self.fourier_transform else z

    # ------------------------------------------------------------------ denoiser contract
    def preconditioning(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        """``alpha, c_skip, c_out, c_in`` at times ``t`` (see module docstring), broadcastable. With
        ``skip="gaussian"``, ``c_skip`` is None (the skip is a matrix: :meth:`skip_term`) and ``c_out`` is the
        Gaussian posterior std per component."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha = append_dims(alpha.to(self.data_std.dtype), ndim)
        s = append_dims(sigma.to(self.data_std.dtype), ndim) / alpha
        d2 = self.data_std**2
        norm = torch.sqrt(s**2 + d2)
        if self.gaussian_skip is not None:
            c_out = self.gaussian_skip.posterior_std(s.reshape(-1) ** 2, tuple(self.data_std.shape))
            return alpha, None, c_out, 1.0 / norm
        return alpha, d2 / norm**2, s * self.data_std / norm, 1.0 / norm

    def skip_term(self, x_centred: torch.Tensor, t: torch.Tensor, c_skip: torch.Tensor | None) -> torch.Tensor:
        """The linear part of ``x0_hat - m``: ``c_skip x~`` or the Gaussian posterior mean."""
        if c_skip is not None:
            return c_skip * x_centred
        alpha, sigma = self.schedule.alpha_sigma(t)
        s2 = (sigma.to(x_centred.dtype) / alpha.to(x_centred.dtype)).reshape(-1) ** 2
        return self.gaussian_skip.posterior_mean(x_centred, s2.expand(len(x_centred)))

    def output_sensitivity(self, t: torch.Tensor, ndim: int = 3, *, alpha_sigma: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """How much an error in the network output ``F`` at times ``t`` moves the final sample, per
        component, in units of that component's data std (used by caches to price a reused output).

        An error ``dF`` changes the data prediction by ``dx0 = (d x0_hat / d F) dF`` (``c_out`` for the
        preconditioned ``x0`` form, ``s = sigma / alpha`` for ``eps``); the solver moves ``x_t`` along
        ``alpha dx0`` and, for Gaussian data of std ``d``, the remaining reverse process maps
        ``x_t / alpha`` to the sample with gain ``d / sqrt(s^2 + d^2)``. Per unit of ``d``:
        ``omega = (d x0_hat / d F) / sqrt(s^2 + d^2)`` -- ``s d / (s^2 + d^2)`` (at most 1/2, largest at
        ``s = d``) for ``x0``, ``s / sqrt(s^2 + d^2)`` for ``eps``. Small at very high noise (the sample
        forgets) and at very low noise (``c_out -> 0``); measurements in docs/e2crf.md.
        Shape: ``(B, max_len, n_channels)`` for ``ndim=3``. ``alpha_sigma``: the schedule's values at
        ``t`` when the caller already has them.
        """
        alpha, sigma = alpha_sigma if alpha_sigma is not None else self.schedule.alpha_sigma(t)
        s = append_dims((sigma / alpha).to(self.data_std.dtype), ndim)
        d = self.data_std
        norm = torch.sqrt(s**2 + d**2)
        if self.parameterization == "eps":
            return (s / norm).expand(s.shape[0], *d.shape)
        if self.gaussian_skip is not None:
            return self.gaussian_skip.posterior_std(s.reshape(-1) ** 2, tuple(d.shape)) / norm
        return s * d / norm**2

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, *,
                network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                clip: bool | None = None) -> torch.Tensor:
        """For the noisy diffusion variable ``x`` at times ``t``: the preconditioned data prediction
        ``x0_hat`` (``parameterization="x0"``) or the predicted noise (``"eps"``). ``network`` replaces the
        call ``F(y, t)`` of the score network (a cache wraps it this way; representation and
        preconditioning stay here). ``clip`` (default ``clip_x0``) clamps ``x0_hat`` to the training range."""
        net = network if network is not None else self.score_network
        if self.parameterization == "eps":
            return net(self.network_input(x), self.schedule.network_time(t))
        alpha, c_skip, c_out, c_in = self.preconditioning(t, x.ndim)
        x_centred = x / alpha - self.data_mean
        out = net(self.network_input(c_in * x_centred), self.schedule.network_time(t))
        x0 = self.data_mean + self.skip_term(x_centred, t, c_skip) + c_out * out
        return self.clamp_to_support(x0) if (self.clip_x0 if clip is None else clip) else x0

    def clamp_to_support(self, z0: torch.Tensor) -> torch.Tensor:
        """Clamp a data prediction (diffusion variable) to each channel's training range in the time domain."""
        return self.encode(self.decode(z0).clamp(self.data_min, self.data_max))

    def cache_interface(self) -> CacheInterface:
        """What a cache may use (:mod:`tsdiff.caching.interface`): the network and its token blocks
        (transformer only; other backbones get step-level reuse), and the pricing inputs.

        A patched backbone's tokens are patches of positions; the cache prices each with the mean square
        data std and output sensitivity of its positions (``tsdiff.caching.pricing``)."""
        net = self.score_network
        tokens = as_token_network(net)
        return CacheInterface(
            denoise_with=lambda x, t, cond, network: self.denoise(x, t, cond, network=network),
            network=net, length=self.sample_shape[0], tokens=tokens, data_std=self.data_std,
            output_sensitivity=self.output_sensitivity, frequency_domain=bool(self.fourier_transform),
        )

    # ------------------------------------------------------------------ training
    def diffusion_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z0 = self.encode(x)
        t = self.schedule.sample_training_times(z0.shape[0], device=z0.device, generator=generator)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        zt = self.schedule.q_sample(z0, t, eps)
        pred = self.denoise(zt, t, clip=False)
        if self.parameterization == "eps":
            per_sample = ((pred - eps) ** 2).flatten(1).mean(1)
        else:
            _, _, c_out, _ = self.preconditioning(t, z0.ndim)
            per_sample = (((pred - z0) / c_out) ** 2).flatten(1).mean(1)
        if self.likelihood_weighting:
            if not hasattr(self.schedule, "sde"):
                raise ValueError("likelihood_weighting needs a continuous SDE schedule (VPSDE/VESDE)")
            _, g = self.schedule.sde(t)
            _, sigma = self.schedule.alpha_sigma(t)
            per_sample = per_sample * (g**2 / sigma**2).to(per_sample.dtype)
        return per_sample.mean()

    @staticmethod
    def _batch_x(batch: Any) -> torch.Tensor:
        return batch["x"] if isinstance(batch, dict) else batch

    def training_step(self, batch, batch_idx):
        loss = self.diffusion_loss(self._batch_x(batch))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=self._batch_x(batch).shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x = self._batch_x(batch)
        # a fixed generator makes validation losses comparable across epochs
        gen = torch.Generator(device=x.device).manual_seed(1000 + batch_idx)
        loss = self.diffusion_loss(x, generator=gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)  # mean over ranks
        return loss

    def configure_callbacks(self) -> list[pl.Callback]:
        """The weight average (warm-up schedule, so short runs are not dominated by the initial weights)."""
        return [EMA(self.hparams.ema_decay, warmup=True)] if self.hparams.ema_decay > 0 else []

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(getattr(self.trainer, "estimated_stepping_batches", 0) or 0), 1)
        warmup = min(self.hparams.lr_warmup_steps, max(total // 10, 1))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress)) * 0.95 + 0.05

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
