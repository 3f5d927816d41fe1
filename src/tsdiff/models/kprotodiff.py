"""K-ProtoDiff (AAAI 2026): key-prototype-guided diffusion for time-series generation, on the Diffusion-TS
backbone (:class:`~tsdiff.models.diffusion_ts.DiffusionTS`), built from what the paper means.

* **Key Prototypes Learner** (KPL, :class:`tsdiff.nets.prototypes.KeyPrototypes`): multi-scale, band-aware
  banks of snippet prototypes learned from the clean training windows by their own self-supervised
  objective (reconstruction from soft gain-shape assignments, a real-FFT magnitude term, usage balance,
  diversity, sharpness), added to the diffusion loss with weight ``kpl_weight``. The banks start at
  training snippets (:meth:`on_datamodule_ready`, seeded).
* **Conditioning** (what "generates time series conditioned on key prototypes" means for an unconditional
  generator): each training window is denoised given its **prototype code** -- the hard assignment of the
  whole window to one prototype of each band's whole-window bank (``segments`` must include 1). The
  chosen prototypes become context tokens (unit shape + the bank's one-hot) that the network reads in
  its cross-attention memory and in its AdaLN conditioning vector; ``x_t`` keeps its own path (residual,
  never replaced). At sampling time the code of each sample is drawn from the empirical joint frequency
  of the codes over the training windows (``code_counts``, a running count with decay ``prior_decay``,
  as the prototypes move) through the contract's ``draw_condition`` -- a discrete latent whose prior is
  its data frequency. A share ``code_dropout`` of training windows get the null code (-1: zero tokens),
  the condition ``denoise(..., cond=None)`` uses. The tokens are detached: the prototypes are shaped by
  their objective only, the diffusion loss trains how the denoiser reads them.
  **Richer codes** (options, measured in docs/kprotodiff.md "Richer codes"): ``code_segments`` adds the codes
  of every half / quarter snippet, and ``prototypes.channelwise`` gives each channel its own code; a
  snippet's token holds its prototype at its own time steps (and channel) of the window. Such codes have too
  many joint cells to count, so their prior is a bank of the codes of ``prior_bank`` training windows (a
  ring buffer while training, refilled from the training set with the final prototypes when training
  ends), and a sample draws one banked code.
  *Why not all prototypes as one constant context*: the previous version fed all 48 tokens to every
  sample; a context that is the same for every sample carries no information about the sample (the
  measured output change with it zeroed or randomised was < 2 %, docs/kprotodiff.md).
* **Reflection Sampling** lives in the sampler layer (:mod:`tsdiff.sampling.reflection`); this system
  offers :meth:`project_x0` -- the prototype reconstruction of an estimate -- as the point it pulls toward.

Departures from the public code (which cannot be run, or feeds ``x_t`` through a 3-scalar bottleneck,
uses mirrored full-FFT bands, has no prototype objective, and "reflects" by a second denoising call): see
``docs/kprotodiff.md``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from tsdiff.models.diffusion_ts import DiffusionTS
from tsdiff.models.guidance import GuidanceScale
from tsdiff.nets.prototypes import KeyPrototypes

__all__ = ["KProtoDiff"]


class KProtoDiff(GuidanceScale, DiffusionTS):
    """Diffusion-TS + KPL. Extra args:

    Args:
        prototypes: a factory ``prototypes(n_channels=, seq_len=) -> KeyPrototypes`` (Hydra ``_partial_``) or a module.
        kpl_weight: weight of the prototype objective in the training loss (0 freezes nothing but trains the
            prototypes only through their initialisation; use ``model=diffusion_ts`` for "no KPL").
        init_prototypes: start the banks at training snippets when the datamodule is ready.
        code_dropout: share of training windows denoised with the null code (``cond=None``).
        prior_decay: per-step decay of the running code counts (the sampling prior follows the moving prototypes).
        code_segments: the scales (snippets per window) whose codes condition the denoiser; ``None``/``[1]``:
            one whole-window code per band.
        prior_bank: codes of training windows kept as the prior of multi-scale or channel-wise codes.
        guidance_scale: classifier-free guidance on the code at sampling time, ``w >= 0`` (0: none, the
            default); settable after training (``cmd/sample.py +model_settings.guidance_scale=w``).
    """

    def __init__(self, n_channels: int | None = None, max_len: int | None = None, *,
                 prototypes: Callable[..., nn.Module] | nn.Module | None = None, kpl_weight: float = 1.0,
                 init_prototypes: bool = True, code_dropout: float = 0.1, prior_decay: float = 0.99,
                 code_segments: list[int] | tuple[int, ...] | None = None, prior_bank: int = 8192,
                 guidance_scale: float = 0.0, **kwargs: Any):
        if prototypes is None:
            raise ValueError("KProtoDiff needs prototypes= (tsdiff.nets.prototypes.KeyPrototypes with _partial_: true)")
        if kpl_weight < 0:
            raise ValueError(f"KProtoDiff kpl_weight must be >= 0, got {kpl_weight}")
        if not 0.0 <= code_dropout < 1.0 or not 0.0 <= prior_decay < 1.0:
            raise ValueError(f"KProtoDiff code_dropout and prior_decay must lie in [0, 1), got {code_dropout}, {prior_decay}")
        code_segments = [1] if code_segments is None else [int(s) for s in code_segments]
        if not code_segments or len(set(code_segments)) != len(code_segments) or prior_bank < 1:
            raise ValueError(f"KProtoDiff code_segments must be distinct scales (e.g. [1, 2, 4]) and prior_bank >= 1, "
                             f"got {code_segments}, {prior_bank}")
        if n_channels is not None and max_len is not None:
            kpl = prototypes if isinstance(prototypes, nn.Module) else prototypes(n_channels=int(n_channels), seq_len=int(max_len))
            if not isinstance(kpl, KeyPrototypes) or (kpl.seq_len, kpl.n_channels) != (int(max_len), int(n_channels)):
                raise ValueError(f"KProtoDiff prototypes must be a KeyPrototypes over windows ({max_len}, {n_channels})")
            if 1 not in kpl.segments:
                raise ValueError(f"KProtoDiff conditions on whole-window prototypes: prototypes.segments must include 1, got {kpl.segments}")
            missing = [s for s in code_segments if s not in kpl.segments]
            if missing:
                raise ValueError(f"KProtoDiff code_segments {missing} are not scales of the prototypes (segments {kpl.segments})")
            if code_segments == [1] and not kpl.channelwise and kpl.n_prototypes ** kpl.n_bands > 65536:
                raise ValueError(f"KProtoDiff's code prior has n_prototypes ** n_bands = {kpl.n_prototypes ** kpl.n_bands} cells "
                                 "(> 65536); use fewer prototypes or bands")
            self.context_dim = kpl.placed_token_dim  # the network's context width; a plain int may be set before Module init
        super().__init__(n_channels, max_len, **kwargs)  # checks the data facts
        self.save_hyperparameters(ignore=["net", "schedule", "prototypes"])
        self.kpl = kpl
        self.code_scales = [kpl.segments.index(s) for s in code_segments]
        self.code_layout = kpl.code_layout(self.code_scales)
        # gather index writing each code position's prototype at its own time steps (and channel) of the token
        self.register_buffer("_placement", kpl.token_placement(self.code_scales), persistent=False)
        self.register_buffer("_code_rows", torch.tensor([bank for bank, *_ in self.code_layout]) * kpl.n_prototypes,
                             persistent=False)  # first row of each code position's bank in kpl.tokens()
        self.whole_window_code = code_segments == [1] and not kpl.channelwise
        # the prior draw_condition samples. Whole-window codes: running (decayed) counts of the joint codes of
        # the training windows. Multi-scale codes (too many joint cells to count): a bank of the codes of
        # training windows, a ring buffer while training, refilled from the training set when training ends
        self.register_buffer("code_counts", torch.zeros(kpl.n_prototypes ** kpl.n_bands if self.whole_window_code else 1))
        if not self.whole_window_code:
            self.register_buffer("code_bank", torch.zeros(int(prior_bank), len(self.code_layout), dtype=torch.int16))
            self.register_buffer("code_bank_seen", torch.zeros((), dtype=torch.long))
        # mean share of a training window's variance its prototype reconstruction leaves unexplained (set when
        # training ends, :meth:`calibrate`): how far R-Sampling may pull an estimate (NaN: not calibrated)
        self.register_buffer("residual_level", torch.tensor(float("nan")))
        self.guidance_scale = guidance_scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before the calibration existed: uncalibrated pull (the full prototype reconstruction)
        state_dict.setdefault(prefix + "residual_level", torch.tensor(float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_datamodule_ready(self, datamodule) -> None:
        """Called by the train task before fitting: data statistics, and the banks start at training snippets."""
        super().on_datamodule_ready(datamodule)
        if self.hparams.init_prototypes:
            windows = torch.from_numpy(datamodule.train_array("train"))
            self.kpl.init_from(windows.to(self.kpl.banks[0].device), torch.Generator().manual_seed(int(self.hparams.seed)))

    # ------------------------------------------------------------------ model contract
    def context(self, cond: Any = None) -> torch.Tensor:
        """Tokens ``(B, P, token_dim)`` of the prototypes in the codes ``cond`` ``(B, P)`` (rows with a -1 are the
        null code: zero tokens); ``cond=None``: the null code for the whole batch. A snippet prototype's token
        holds its shape at its own place in the window (zero elsewhere) and its bank's one-hot."""
        tokens = self.kpl.tokens().detach()
        n_pos = len(self.code_layout)
        if cond is None:
            return tokens.new_zeros(1, n_pos, tokens.shape[1])
        codes = torch.as_tensor(cond, device=tokens.device).long()
        if codes.ndim != 2 or codes.shape[1] != n_pos:
            raise ValueError(f"K-ProtoDiff cond must be prototype codes (B, {n_pos}), got shape {tuple(codes.shape)}")
        rows = tokens[self._code_rows + codes.clamp_min(0)]                          # (B, P, D)
        width = tokens.shape[1] - self.kpl.n_bands * len(self.kpl.segments)
        padded = torch.cat([rows[..., :width], rows.new_zeros(*rows.shape[:2], 1)], dim=-1)
        shapes = padded.gather(2, self._placement.expand(len(rows), -1, -1))
        rows = torch.cat([shapes, rows[..., width:]], dim=-1)
        return rows * (codes >= 0).all(dim=1).to(rows.dtype).view(-1, 1, 1)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``x0_hat`` given the codes ``cond``; with ``guidance_scale`` w > 0, classifier-free guidance
        ``(1 + w) x0(code) - w x0(null code)`` (Ho & Salimans 2022, on ``x0``, the network's output; the null
        code is the one ``code_dropout`` trains). One network call on the doubled batch, so a guided step costs
        two evaluations' compute (``network_evaluations`` counts calls)."""
        if self.guidance_scale == 0.0 or cond is None:
            return super().denoise(x, t, cond)
        codes = torch.as_tensor(cond, device=x.device).long()
        both = super().denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([codes, torch.full_like(codes, -1)]))
        return self.guided(*both.chunk(2))

    def draw_condition(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` prototype codes ``(n, P)`` drawn from the training windows' codes (uniform before any training
        step has seen a code): from the joint code frequencies (whole-window codes) or uniformly among the
        banked codes of training windows (multi-scale codes)."""
        device = generator.device if generator is not None else self.code_counts.device
        k = self.kpl.n_prototypes
        if not self.whole_window_code:
            filled = int(min(int(self.code_bank_seen), len(self.code_bank)))
            if filled == 0:
                return torch.randint(0, k, (n, len(self.code_layout)), generator=generator, device=device).to(self.code_counts.device)
            rows = torch.randint(0, filled, (n,), generator=generator, device=device).to(self.code_bank.device)
            return self.code_bank[rows].long()
        counts = self.code_counts.double()
        probs = counts if counts.sum() > 0 else torch.ones_like(counts)
        joint = torch.multinomial(probs.to(device), n, replacement=True, generator=generator)
        return torch.stack([(joint // k**b) % k for b in range(self.kpl.n_bands)], dim=1).to(self.code_counts.device)

    def training_condition(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The codes of the clean windows; while training, also counted into the prior and dropped to the null
        code with probability ``code_dropout``."""
        codes = self.kpl.codes(x0, self.code_scales)
        if self.training:
            self._count_codes(codes)
            if self.hparams.code_dropout > 0:
                drop = torch.rand(len(codes), generator=generator, device=codes.device) < self.hparams.code_dropout
                codes = codes.masked_fill(drop.unsqueeze(1), -1)
        return codes

    def _count_codes(self, codes: torch.Tensor) -> None:
        if self.whole_window_code:
            k = self.kpl.n_prototypes
            joint = sum(codes[:, b] * k**b for b in range(self.kpl.n_bands))
            hist = torch.bincount(joint, minlength=self.code_counts.numel()).to(self.code_counts.dtype)
            self.code_counts.mul_(self.hparams.prior_decay).add_(hist)
            return
        size = len(self.code_bank)
        codes = codes[-size:]
        slots = (int(self.code_bank_seen) + torch.arange(len(codes), device=codes.device)) % size
        self.code_bank[slots] = codes.to(self.code_bank.dtype)
        self.code_bank_seen.add_(len(codes))

    @torch.no_grad()
    def fill_code_bank(self, windows: torch.Tensor, batch_size: int = 2048) -> None:
        """Multi-scale codes: refill the prior's bank with the codes of clean ``windows`` ``(N, L, C)`` under
        the current prototypes (a seeded subset of ``prior_bank`` windows when there are more)."""
        if self.whole_window_code:
            return
        size = len(self.code_bank)
        if len(windows) > size:
            keep = torch.randperm(len(windows), generator=torch.Generator().manual_seed(int(self.hparams.seed)))[:size]
            windows = windows[keep.sort().values]
        codes = torch.cat([self.kpl.codes(w.to(self.code_bank.device), self.code_scales) for w in windows.split(batch_size)])
        self.code_bank[: len(codes)] = codes.to(self.code_bank.dtype)
        self.code_bank_seen.fill_(len(codes))

    def _residual_share(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return (recon - x).pow(2).sum(dim=(1, 2)) / centred.pow(2).sum(dim=(1, 2)).clamp_min(1e-8)

    @torch.no_grad()
    def calibrate(self, windows: torch.Tensor, batch_size: int = 2048) -> float:
        """Set ``residual_level``: the mean unexplained-variance share of the prototype reconstruction over
        clean ``windows`` ``(N, L, C)``; returns it."""
        shares = [self._residual_share(w, self.kpl.project(w)) for w in windows.to(self.code_counts.device).split(batch_size)]
        self.residual_level.fill_(float(torch.cat(shares).mean()))
        return float(self.residual_level)

    def on_train_end(self) -> None:
        """Runs after the EMA callback copied the averaged weights in: calibrate on the training windows and
        (multi-scale codes) refill the code prior from them under the final prototypes."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_array"):
            windows = torch.from_numpy(datamodule.train_array("train")).float()
            self.calibrate(windows)
            self.fill_code_bank(windows)

    def project_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Where R-Sampling pulls an estimate ``x0`` ``(B, L, C)`` (:mod:`tsdiff.sampling.reflection`): toward its
        prototype reconstruction ``P(x0)`` (averaged over scales), but only as far as real windows are
        explained. Calibrated target ``P + min(1, sqrt(level / share(x0))) (x0 - P)``: an estimate whose
        residual share exceeds the training windows' mean ``level`` has its residual shrunk to that share of its own
        variance;
        one that is already as prototype-like as real data is left alone. (Pulling to ``P`` itself removed
        detail real windows have: on energy, samples ended 0.29 unexplained vs 0.33 for real windows, and
        C-FID rose 0.133 -> 0.211; docs/kprotodiff.md.) Uncalibrated runs (NaN level) pull to ``P``."""
        recon = self.kpl.project(x0)
        if torch.isnan(self.residual_level):
            return recon
        keep = (self.residual_level / self._residual_share(x0, recon).clamp_min(1e-12)).sqrt().clamp(max=1.0)
        return recon + keep.view(-1, 1, 1) * (x0 - recon)

    # ------------------------------------------------------------------ training
    def extra_loss(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.kpl.loss(x0)
        for name in ("recon", "balance", "diversity"):
            self.log(f"train/kpl_{name}", terms[name].detach(), on_step=True, on_epoch=False, batch_size=len(x0))
        return {"kpl_loss": self.hparams.kpl_weight * terms["total"]}

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)
        x = self._batch_x(batch)
        self.log("val/kpl_recon", self.kpl.loss(x)["recon"], on_epoch=True, batch_size=len(x), sync_dist=True)
        return loss
