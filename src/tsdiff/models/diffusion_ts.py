"""Diffusion-TS (Yuan & Qiao, ICLR 2024) as a tsdiff system: the ``diffusion_ts`` baseline of K-ProtoDiff and
its backbone, trained and sampled through the same commands (``python cmd/train.py model=diffusion_ts``).

* **Network**: :class:`tsdiff.nets.diffusion_ts.DiffusionTSNet` (trend + season + residual decoder).
* **Diffusion**: a discrete cosine schedule (Nichol & Dhariwal 2021; Diffusion-TS uses 500 steps at length
  24), data in the datamodule's space (``datamodule.scaling=minmax``: ``[-1, 1]``, the Diffusion-TS convention).
* **Prediction and loss** (Diffusion-TS eq. 8-9): the network predicts ``x0``; the loss is the L1 or L2 error
  plus ``fourier_weight`` x the same error on the real FFT (``norm="forward"``) of prediction and target,
  real and imaginary parts. ``fourier_weight=None`` is the paper's ``sqrt(L) / 5``. The real FFT replaces
  the full FFT of the reference code (which counts each frequency twice through its mirrored bin).
  Diffusion-TS also reweights the loss per step; we keep uniform weights over steps (stated, not measured).
* **Sampling**: through :class:`~tsdiff.sampling.DiffusionSampler` (``default_solver`` ``ddim``: deterministic
  DDIM on the respaced schedule -- Diffusion-TS samples ancestrally, but at 100 of 500 steps the ancestral
  sampler is not converged and DDIM's C-FID is lower for this backbone and K-ProtoDiff on every measured seed;
  ``ddpm`` stays available; ``sampler=reflection`` is R-Sampling, :mod:`tsdiff.sampling.reflection`).
* **Optimisation**: Adam, linear warm-up then cosine decay, an EMA of the weights
  (:class:`tsdiff.models.callbacks.EMA`) that the checkpoint holds after training.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from tsdiff.diffusion.schedules import CosineSchedule, NoiseSchedule
from tsdiff.models.callbacks import EMA
from tsdiff.utils import append_dims

__all__ = ["DiffusionTS"]

Net = Callable[..., nn.Module] | nn.Module


class DiffusionTS(pl.LightningModule):
    """Unconditional generator of windows ``(max_len, n_channels)``; batches are ``{"x": (B, L, C)}`` or tensors.

    Args:
        n_channels, max_len: data facts (the train task passes the datamodule's).
        net: a factory ``net(n_channels=, max_len=, context_dim=) -> DiffusionTSNet`` (Hydra ``_partial_``) or a module.
        schedule: default ``CosineSchedule(500)``.
        loss: ``"l1"`` or ``"l2"``; fourier_weight: see the module docstring.
        lr, weight_decay, lr_warmup_steps: Adam with warm-up and cosine decay over the run's steps.
        ema_decay: EMA of the weights (null/0: none).
        default_solver: the sampler's solver for ``sampler=auto``.
        precondition: wrap the network in EDM's preconditioning (``x0_hat = m + c_skip (x_t / alpha - m) + c_out
            F(c_in (x_t / alpha - m))`` with the per-component training mean ``m`` and std, loss weight
            ``1 / c_out^2``) -- a departure from Diffusion-TS (plain ``x0 = F(x_t)``); see docs/kprotodiff.md.
    """

    context_dim: int = 0

    def __init__(self, n_channels: int | None = None, max_len: int | None = None, *, net: Net | None = None,
                 schedule: NoiseSchedule | None = None, loss: str = "l2", fourier_weight: float | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, lr_warmup_steps: int = 200, ema_decay: float | None = 0.995,
                 default_solver: str = "ddim", precondition: bool = False, seed: int = 0):
        super().__init__()
        name = type(self).__name__
        if n_channels is None or max_len is None:
            raise ValueError(f"{name} needs the data facts n_channels and max_len: let the train task pass "
                             "datamodule.model_kwargs(), or set model.n_channels / model.max_len")
        if net is None:
            raise ValueError(f"{name} needs net= (e.g. tsdiff.nets.diffusion_ts.DiffusionTSNet with _partial_: true)")
        if loss not in ("l1", "l2"):
            raise ValueError(f"{name} loss must be 'l1' or 'l2', got {loss!r}")
        if fourier_weight is not None and fourier_weight < 0:
            raise ValueError(f"{name} fourier_weight must be >= 0 or null (sqrt(L)/5), got {fourier_weight}")
        EMA.check_decay(ema_decay)
        self.save_hyperparameters(ignore=["net", "schedule"])
        self.sample_shape = (int(max_len), int(n_channels))
        self.schedule = schedule if schedule is not None else CosineSchedule(500)
        self.parameterization = "x0"
        self.default_solver = default_solver
        self.fourier_weight = math.sqrt(max_len) / 5 if fourier_weight is None else float(fourier_weight)
        self.net = net if isinstance(net, nn.Module) else net(n_channels=int(n_channels), max_len=int(max_len),
                                                               context_dim=self.context_dim)
        self._check_net()
        # per-component training mean/std (fit_data_stats), used when precondition=True
        self.register_buffer("data_mean", torch.zeros(self.sample_shape))
        self.register_buffer("data_std", torch.ones(self.sample_shape))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before the preconditioning statistics existed were trained without preconditioning
        state_dict.setdefault(prefix + "data_mean", torch.zeros_like(self.data_mean))
        state_dict.setdefault(prefix + "data_std", torch.ones_like(self.data_std))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_net(self) -> None:
        if getattr(self.net, "context_dim", 0) != self.context_dim:
            raise ValueError(f"{type(self).__name__}: the net takes context_dim={getattr(self.net, 'context_dim', 0)}, "
                             f"the system gives {self.context_dim}; build the net with the system (net: _partial_: true)")

    # ------------------------------------------------------------------ model contract
    def context(self, cond: Any = None) -> torch.Tensor | None:
        """Context tokens for the network given ``cond`` (none for Diffusion-TS)."""
        return None

    def training_condition(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        """The ``cond`` a training/validation batch of clean windows is denoised with (none here)."""
        return None

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x0_hat`` for ``x_t`` ``(B, L, C)`` at step indices ``t`` ``(B,)``; ``cond`` goes to :meth:`context`
        (Diffusion-TS ignores it: unconditional)."""
        context = self.context(cond)
        if not self.hparams.precondition:
            return self.net(x, t.to(x.dtype), context)
        alpha, c_skip, c_out, c_in = self.preconditioning(t, x.ndim)
        centred = x / alpha - self.data_mean
        return self.data_mean + c_skip * centred + c_out * self.net(c_in * centred, t.to(x.dtype), context)

    def preconditioning(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        """``alpha, c_skip, c_out, c_in`` (Karras et al. 2022, Table 1, for ``x_t / alpha = x0 + (sigma / alpha) eps``,
        around the per-component training mean and std), broadcastable to ``(B, L, C)``."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha = append_dims(alpha.to(self.data_std.dtype), ndim)
        s2 = (append_dims(sigma.to(self.data_std.dtype), ndim) / alpha) ** 2
        d2 = self.data_std**2
        return alpha, d2 / (s2 + d2), (s2 * d2 / (s2 + d2)).sqrt(), (s2 + d2).rsqrt()

    @torch.no_grad()
    def fit_data_stats(self, windows: torch.Tensor) -> None:
        """Per-component mean and std of the training windows ``(N, L, C)`` (std floored at 1% of its rms)."""
        w = torch.as_tensor(windows, dtype=torch.float64)
        std = w.std(dim=0) if len(w) > 1 else torch.ones_like(w[0])
        self.data_std.copy_(std.clamp_min(max(0.01 * float(std.pow(2).mean().sqrt()), 1e-6)).float())
        self.data_mean.copy_(w.mean(dim=0).float())

    def on_datamodule_ready(self, datamodule) -> None:
        """Called by the train task before fitting: the data statistics of the preconditioning."""
        self.fit_data_stats(torch.from_numpy(datamodule.train_array("train")))

    # ------------------------------------------------------------------ training
    def _errors(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred - target
        return diff.abs() if self.hparams.loss == "l1" else diff.pow(2)

    def diffusion_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.schedule.sample_training_times(x0.shape[0], device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        pred = self.denoise(self.schedule.q_sample(x0, t, eps), t, self.training_condition(x0, generator))
        # preconditioned: weight 1 / c_out^2 (unit-variance targets for the network; EDM's loss weight)
        weight = self.preconditioning(t, x0.ndim)[2].pow(-2) if self.hparams.precondition else x0.new_ones(1, 1, 1)
        loss = (weight * self._errors(pred, x0)).mean()
        if self.fourier_weight > 0:
            fp, ft = torch.fft.rfft(pred, dim=1, norm="forward"), torch.fft.rfft(x0, dim=1, norm="forward")
            per_sample = weight.mean(dim=(1, 2), keepdim=True)
            loss = loss + self.fourier_weight * (per_sample * (self._errors(fp.real, ft.real) + self._errors(fp.imag, ft.imag))).mean()
        return loss

    def extra_loss(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further training terms of a subclass (name -> scalar already weighted); none here."""
        return {}

    @staticmethod
    def _batch_x(batch: Any) -> torch.Tensor:
        x = batch["x"] if isinstance(batch, dict) else batch
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise TypeError("Diffusion-TS batches are (B, L, C) tensors or {'x': (B, L, C)} (the window datamodules)")
        return x

    def _check_batch(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"batch windows {tuple(x.shape[1:])} do not match the model {self.sample_shape}; "
                             "train with the datamodule the model was built for")

    def training_step(self, batch, batch_idx):
        x = self._batch_x(batch)
        self._check_batch(x)
        loss = self.diffusion_loss(x)
        self.log("train/diffusion_loss", loss, on_step=True, on_epoch=False, batch_size=len(x))
        for name, value in self.extra_loss(x).items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=len(x))
            loss = loss + value
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x = self._batch_x(batch)
        gen = torch.Generator(device=x.device).manual_seed(1000 + batch_idx)  # comparable across epochs
        loss = self.diffusion_loss(x, generator=gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(x), sync_dist=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(getattr(self.trainer, "estimated_stepping_batches", 0) or 0), 2)
        warmup = max(min(self.hparams.lr_warmup_steps, total // 10), 1)
        lr_sched = torch.optim.lr_scheduler  # linear warm-up, then cosine decay to a tenth of the rate
        sched = lr_sched.SequentialLR(opt, [lr_sched.LinearLR(opt, 1.0 / warmup, 1.0, warmup),
                                            lr_sched.CosineAnnealingLR(opt, max(total - warmup, 1), self.hparams.lr / 10)],
                                      milestones=[warmup])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[pl.Callback]:
        decay = self.hparams.ema_decay
        return [EMA(decay, warmup=True)] if decay else []
