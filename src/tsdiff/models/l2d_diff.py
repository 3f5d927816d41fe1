"""L2D-Diff ("Latent-to-Data Cascaded Diffusion Models for Unconditional Time Series Generation", ICLR 2026)
as one LightningModule; networks in :mod:`tsdiff.nets.l2d`, sampling by
:class:`~tsdiff.sampling.cascade.CascadeSampler`.

* **Masked pretraining**: ``E``/``D`` (:class:`~tsdiff.nets.l2d.MaskedAutoencoder`), ``mask_rate`` (50 %) of
  the time steps masked, loss on masked positions only (:func:`~tsdiff.nets.l2d.masked_mse`).
* **Latent diffusion**: DDPM on ``r_0 = E(x)`` with ``r_0`` prediction, K = 100, linear betas; a residual MLP.
  Latents are standardized with the mean/std of the encoded training windows (computed once when the stage
  starts and kept in buffers) so that the prior N(0, I) matches their scale; the paper does not say how it
  scales ``r``.
* **Data diffusion**: ``x_0`` prediction on the window given ``F(c)``, ``c = r_0`` (standardized), K = 100,
  linear betas. ``cond_dropout`` replaces ``c`` by a learned null code so that ``guidance_scale`` > 0 gives
  classifier-free guidance ``(1 + w) x_theta(x, k, F(c)) - w x_theta(x, k, F(null))`` (not in the paper).
* **Training order**: the three parts train one after the other in ONE ``fit()``: ``stage_steps`` =
  ``[autoencoder, latent, data]`` optimizer steps, the stage chosen from ``global_step`` (so a resumed run
  continues in the right stage); one Adam whose parameters without a gradient in a step are skipped, so each
  stage only moves its own part, the encoder stays frozen after stage 1. Training stops itself after the sum.
* **Per-stage EMA** (``ema_decay``, not in the paper): each stage keeps a moving average of its own weights
  (warm-up ``min(decay, (1 + k) / (10 + k))`` at the stage's step ``k``) and ends with it copied into the
  module, so the next stage encodes/conditions with the averaged weights. The shared
  :class:`~tsdiff.models.callbacks.EMA` callback averages the whole module across stage boundaries, which
  would wash a finished stage's average out while the next stage trains. Without it the latent samples of
  JapaneseVowels were off by up to 0.33 std in their mean; with it 0.07 (docs/l2d_diff.md).
* **Variants** (``variant``): ``full``; ``latent_only`` (sample ``r_0``, decode with ``D``; no data stage);
  ``data_only`` (the data branch with the null code only: an unconditional DDPM; no encoder, no latent stage).
* **K = 100 with linear betas**: Ho et al.'s 1e-4..0.02 is for K = 1000 (over 100 steps it leaves
  ``alpha_bar_K = e^-1``, far from noise); the configs scale it to 1e-3..0.2 (``alpha_bar_K ~ e^-10``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as nnf
from torch import nn

from tsdiff.diffusion.schedules import LinearSchedule, NoiseSchedule
from tsdiff.models.guidance import GuidanceScale
from tsdiff.nets.l2d import (
    ConditionalConvDenoiser,
    LatentConditionNet,
    MaskedAutoencoder,
    ResidualMLPDenoiser,
    masked_mse,
)
from tsdiff.sampling.contract import Stage

__all__ = ["STAGES", "VARIANTS", "L2DDiff", "LatentBranch"]

VARIANTS = ("full", "latent_only", "data_only")
STAGES = ("autoencoder", "latent", "data")


class LatentBranch(nn.Module):
    """The latent stage as a model of the contract: ``r_phi(r_s, s)`` on standardized latents ``(B, d)``.
    With ``decoder`` (the latent-only ablation) it also decodes ``r_0`` to a window with ``D``."""

    parameterization = "x0"

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, dim: int):
        super().__init__()
        self.net, self.schedule, self.sample_shape = net, schedule, (dim,)

    def denoise(self, r: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.net(r, self.schedule.network_time(t))


class DecodedLatentBranch(LatentBranch):
    def __init__(self, net: nn.Module, schedule: NoiseSchedule, dim: int, autoencoder: MaskedAutoencoder,
                 mean: torch.Tensor, std: torch.Tensor):
        super().__init__(net, schedule, dim)
        self.autoencoder, self.mean, self.std = autoencoder, mean, std

    def decode(self, r: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(r * self.std + self.mean)


def _check(n_channels, seq_len, variant, stage_steps, mask_rate, cond_dropout) -> list[int]:
    if n_channels is None or seq_len is None:
        raise ValueError("L2DDiff needs the data facts n_channels and max_len (the window length): the train task "
                         "passes them from the datamodule; in Python give L2DDiff(n_channels=C, max_len=L, ...)")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; choose one of {', '.join(VARIANTS)}")
    steps = [int(s) for s in stage_steps] if stage_steps is not None else []
    if len(steps) != 3 or min(steps) < 0:
        raise ValueError(f"stage_steps must be three non-negative step counts [autoencoder, latent, data], got {stage_steps}")
    need = {"full": (0, 1, 2), "latent_only": (0, 1), "data_only": (2,)}[variant]
    if any(steps[i] == 0 for i in need):
        raise ValueError(f"variant={variant} trains the {[STAGES[i] for i in need]} stages; give each a positive "
                         f"budget in model.stage_steps (got {steps})")
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    return [s if i in need else 0 for i, s in enumerate(steps)]


class L2DDiff(GuidanceScale, pl.LightningModule):
    """Batches are ``{"x": (B, L, C)}`` windows. As a contract model it is the data branch:
    ``denoise(x, t, cond)`` with ``cond`` the standardized latent ``(B, d)`` (or ``{"r": ...}``, or None for
    the null code); :meth:`cascade_stages` gives the full two-stage sampler."""

    parameterization = "x0"

    def __init__(self, n_channels: int | None = None, max_len: int | None = None, *, latent_dim: int = 8,
                 variant: str = "full", stage_steps: tuple[int, int, int] = (1000, 1000, 2000), mask_rate: float = 0.5,
                 cond_dropout: float = 0.1, guidance_scale: float = 0.0, ae_hidden: int = 64, ae_depth: int = 4,
                 decoder_hidden: int = 256, latent_hidden: int = 256, latent_blocks: int = 4, cond_channels: int = 64,
                 cond_hidden: int = 64, data_hidden: int = 64, data_blocks: int = 6,
                 latent_schedule: NoiseSchedule | None = None, data_schedule: NoiseSchedule | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, ema_decay: float | None = 0.995,
                 latent_stats_windows: int = 4096, seed: int = 0):
        super().__init__()
        budget = _check(n_channels, max_len, variant, stage_steps, mask_rate, cond_dropout)
        stage_steps = [int(s) for s in stage_steps]  # a plain list in the checkpoint (weights_only loading)
        self.save_hyperparameters(ignore=["latent_schedule", "data_schedule"])
        self.n_channels, self.seq_len, self.latent_dim = int(n_channels), int(max_len), int(latent_dim)
        self.variant, self.budget = variant, budget
        self.latent_schedule = latent_schedule or LinearSchedule(100, 1e-3, 0.2)
        self.schedule = data_schedule or LinearSchedule(100, 1e-3, 0.2)
        self.guidance_scale = guidance_scale
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # the init is a function of the seed, without touching the global RNG
            self.autoencoder = MaskedAutoencoder(self.n_channels, self.seq_len, self.latent_dim, ae_hidden, ae_depth,
                                                 decoder_hidden, seed=int(seed))
            self.latent_denoiser = ResidualMLPDenoiser(self.latent_dim, latent_hidden, latent_blocks)
            self.condition_net = LatentConditionNet(self.latent_dim, self.seq_len, cond_channels, cond_hidden)
            self.data_denoiser = ConditionalConvDenoiser(self.n_channels, self.seq_len, cond_channels, data_hidden,
                                                         data_blocks)
        self.null_code = nn.Parameter(torch.zeros(self.latent_dim))
        self.register_buffer("latent_mean", torch.zeros(self.latent_dim))
        self.register_buffer("latent_std", torch.ones(self.latent_dim))
        self.register_buffer("latent_stats_ready", torch.tensor(False))
        self._train_windows: torch.Tensor | None = None
        self._train_latents: torch.Tensor | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._ema: dict[str, torch.Tensor] = {}  # the running stage's averaged parameters (checkpointed)
        self._resume_generator: torch.Tensor | None = None
        if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (null: no averaging), got {ema_decay}")

    # ------------------------------------------------------------------ contract (the data branch)
    @property
    def sample_shape(self) -> tuple[int, int]:
        return (self.seq_len, self.n_channels)

    def _code(self, cond: Any, batch: int) -> torch.Tensor:
        r = cond.get("r") if isinstance(cond, dict) else cond
        if r is None:
            return self.null_code.expand(batch, -1)
        if not isinstance(r, torch.Tensor) or tuple(r.shape) != (batch, self.latent_dim):
            raise ValueError(f"L2D-Diff's condition is a latent code of shape ({batch}, {self.latent_dim}), got "
                             f"{getattr(r, 'shape', type(r).__name__)}")
        return r

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x_theta(x_k, k, F(c))``; with ``guidance_scale`` w > 0 and a condition, classifier-free guidance."""
        k = self.schedule.network_time(t)
        r = self._code(cond, x.shape[0])
        w = self.guidance_scale if self.variant == "full" else 0.0
        if w == 0.0 or (isinstance(cond, dict) and cond.get("r") is None) or cond is None:
            return self.data_denoiser(x, k, self.condition_net(r))
        both = self.data_denoiser(torch.cat([x, x]), torch.cat([k, k]),
                                  self.condition_net(torch.cat([r, self.null_code.expand_as(r)])))
        return self.guided(*both.chunk(2))

    def cascade_stages(self) -> list[Stage]:
        """Latent stage then data stage (``c = r_0``); one stage for each ablation."""
        latent = LatentBranch(self.latent_denoiser, self.latent_schedule, self.latent_dim)
        if self.variant == "latent_only":
            return [Stage("latent", DecodedLatentBranch(self.latent_denoiser, self.latent_schedule, self.latent_dim,
                                                        self.autoencoder, self.latent_mean, self.latent_std))]
        if self.variant == "data_only":
            return [Stage("data", self)]
        return [Stage("latent", latent), Stage("data", self, condition=lambda r: {"r": r})]

    # ------------------------------------------------------------------ latents
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized ``r_0 = E(x)`` of windows ``(B, L, C)`` (no gradient: the encoder is frozen by then)."""
        with torch.no_grad():
            return (self.autoencoder.encode(x) - self.latent_mean) / self.latent_std

    def _ensure_latent_stats(self, x: torch.Tensor) -> None:
        """Mean/std of the encoded training windows (the datamodule's, else this batch's), once; with a
        datamodule also the standardized latents of its training windows (the latent stage's data)."""
        if bool(self.latent_stats_ready) and (self._train_windows is None or self._train_latents is not None):
            return
        ref = self._train_windows if self._train_windows is not None else x
        with torch.no_grad():
            r = torch.cat([self.autoencoder.encode(chunk.to(self.device)) for chunk in ref.split(512)])
        if not bool(self.latent_stats_ready):  # a resumed run keeps the statistics it trained with
            self.latent_mean.copy_(r.mean(0))
            self.latent_std.copy_(r.std(0).clamp_min(1e-4) if len(r) > 1 else torch.ones_like(r[0]))
            self.latent_stats_ready.fill_(True)
        if self._train_windows is not None:
            self._train_latents = (r - self.latent_mean) / self.latent_std

    # ------------------------------------------------------------------ losses
    def stage_at(self, step: int) -> str:
        """The stage trained at optimizer step ``step`` (the last stage with a budget once all are spent)."""
        edge = 0
        for name, n in zip(STAGES, self.budget):
            edge += n
            if step < edge:
                return name
        return [name for name, n in zip(STAGES, self.budget) if n > 0][-1]

    def autoencoder_loss(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        masked = torch.rand(x.shape[:2], generator=gen, device=x.device) < self.hparams.mask_rate
        return masked_mse(x, self.autoencoder(x, ~masked), masked)

    def latent_loss(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """While training with a datamodule, the batch is drawn (with ``gen``) from the latents of the training
        windows encoded once at the stage start (the encoder is frozen, so they do not change): the same
        distribution as encoding the loader's batch, at a fraction of the cost."""
        self._ensure_latent_stats(x)
        if self.training and self._train_latents is not None:
            idx = torch.randint(0, len(self._train_latents), (len(x),), generator=gen, device=gen.device if gen else None)
            r0 = self._train_latents[idx.to(self._train_latents.device)]
        else:
            r0 = self.latents(x)
        t = self.latent_schedule.sample_training_times(len(x), device=x.device, generator=gen)
        noise = torch.randn(r0.shape, generator=gen, device=x.device)
        pred = self.latent_denoiser(self.latent_schedule.q_sample(r0, t, noise), self.latent_schedule.network_time(t))
        return nnf.mse_loss(pred, r0)

    def data_loss(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        b = len(x)
        if self.variant == "data_only":
            r = self.null_code.expand(b, -1)
        else:
            self._ensure_latent_stats(x)
            drop = torch.rand(b, generator=gen, device=x.device) < self.hparams.cond_dropout
            r = torch.where(drop[:, None], self.null_code.expand(b, -1), self.latents(x))
        t = self.schedule.sample_training_times(b, device=x.device, generator=gen)
        noise = torch.randn(x.shape, generator=gen, device=x.device)
        pred = self.data_denoiser(self.schedule.q_sample(x, t, noise), self.schedule.network_time(t), self.condition_net(r))
        return nnf.mse_loss(pred, x)

    def stage_loss(self, stage: str, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return {"autoencoder": self.autoencoder_loss, "latent": self.latent_loss, "data": self.data_loss}[stage](x, gen)

    # ------------------------------------------------------------------ Lightning
    def _generator(self, name: str, offset: int, fresh: bool = False) -> torch.Generator:
        gen = self._generators.get(name)
        if fresh or gen is None or gen.device != self.device:
            gen = self._generators[name] = torch.Generator(device=self.device).manual_seed(int(self.hparams.seed) + offset)
        return gen

    def on_datamodule_ready(self, datamodule: Any) -> None:
        """Keep (up to ``latent_stats_windows``) training windows for the latent statistics and the latent
        stage's data: a seeded random subset when there are more, never the first ones, since windows of a
        time-ordered series (energy: ~15,000) would then all come from its first weeks (the latent stage learned
        those alone, and the cascade scored C-FID 2.9 against the Gaussian's 0.12)."""
        windows = torch.as_tensor(datamodule.train_array("train"))
        cap = int(self.hparams.latent_stats_windows)
        if len(windows) > cap:
            gen = torch.Generator().manual_seed(int(self.hparams.seed))
            windows = windows[torch.randperm(len(windows), generator=gen)[:cap].sort().values]
        self._train_windows = windows

    def on_fit_start(self) -> None:
        total, max_steps = sum(self.budget), self.trainer.max_steps
        if max_steps not in (-1, None) and max_steps < total:
            raise ValueError(f"trainer.max_steps={max_steps} ends before L2D-Diff's stages are done "
                             f"(model.stage_steps sum to {total}); set trainer.max_steps=-1 (the model stops itself) "
                             "or lower model.stage_steps")
        gen = self._generator("train", 0, fresh=True)
        if self._resume_generator is not None:  # a resumed run draws the noise an uninterrupted one would
            gen.set_state(self._resume_generator)
            self._resume_generator = None

    def _x(self, batch: Any) -> torch.Tensor:
        x = batch["x"] if isinstance(batch, dict) else batch
        if x.ndim != 3 or tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"batch windows have shape {tuple(x.shape)}, the model was built for (B, {self.seq_len}, "
                             f"{self.n_channels}); use the datamodule the model was built with")
        return x

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = self._x(batch)
        stage = self.stage_at(int(self.global_step))
        if stage != "autoencoder":
            self.autoencoder.eval()  # frozen; (its encoder has no dropout or normalization anyway)
        loss = self.stage_loss(stage, x, self._generator("train", 0))
        self.log(f"train/{stage}_loss", loss, prog_bar=True, batch_size=len(x))
        self.log("train/loss", loss, batch_size=len(x))
        return loss

    def stage_parameters(self, stage: str) -> dict[str, nn.Parameter]:
        prefixes = {"autoencoder": ("autoencoder.",), "latent": ("latent_denoiser.",),
                    "data": ("data_denoiser.", "condition_net.", "null_code")}[stage]
        return {n: p for n, p in self.named_parameters() if n.startswith(prefixes)}

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): average the stage that step trained; at the stage's last
        step copy the average into the module."""
        decay = self.hparams.ema_decay
        stage = self.stage_at(step - 1)
        if decay:
            k = step - 1 - sum(self.budget[: STAGES.index(stage)])  # the stage's own step
            rate = 1.0 - min(float(decay), (1 + k) / (10 + k))
            for name, p in self.stage_parameters(stage).items():
                avg = self._ema.get(name)
                if avg is None or k == 0:
                    self._ema[name] = p.detach().clone()
                else:
                    avg.lerp_(p.detach(), rate)
        if self._ema and (self.stage_at(step) != stage or step == sum(self.budget)):
            for name, p in self.stage_parameters(stage).items():
                p.copy_(self._ema[name])
            self._ema.clear()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._update_ema(int(self.global_step))
        if self.global_step >= sum(self.budget):
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["l2d_ema"] = {k: v.detach().cpu().clone() for k, v in self._ema.items()}
        if "train" in self._generators:
            checkpoint["l2d_generator"] = self._generators["train"].get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._ema = {k: v.to(self.device) for k, v in checkpoint.get("l2d_ema", {}).items()}
        self._resume_generator = checkpoint.get("l2d_generator")

    def on_validation_epoch_start(self) -> None:
        self._generator("val", 1, fresh=True)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = self._x(batch)
        stage = self.stage_at(max(int(self.global_step) - 1, 0))  # the stage the last step trained
        loss = self.stage_loss(stage, x, self._generator("val", 1))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
