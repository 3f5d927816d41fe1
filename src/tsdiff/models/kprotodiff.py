"""K-ProtoDiff (AAAI 2026): key-prototype-guided diffusion for time-series generation, on the Diffusion-TS
backbone (:class:`~tsdiff.models.diffusion_ts.DiffusionTS`), built from what the paper means.

* **Key Prototypes Learner** (KPL, :class:`tsdiff.nets.prototypes.KeyPrototypes`): multi-scale, band-aware
  banks of snippet prototypes learned from the clean training windows by their own self-supervised
  objective (reconstruction from soft gain-shape assignments, a real-FFT magnitude term, usage balance,
  diversity, sharpness), added to the diffusion loss with weight ``kpl_weight``. The banks start at
  training snippets (:meth:`on_datamodule_ready`, seeded).
* **Conditioning**: every prototype becomes a context token (unit shape + its bank's one-hot), projected by
  the network into the decoder's cross-attention memory. The attention weights are the *adaptive
  assignment* of each position of the estimate to the prototypes; the noisy input keeps its own path
  (residual, not replaced). The tokens are detached: the prototypes are shaped by their objective only, the
  diffusion loss trains how the denoiser reads them.
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
from tsdiff.nets.prototypes import KeyPrototypes

__all__ = ["KProtoDiff"]


class KProtoDiff(DiffusionTS):
    """Diffusion-TS + KPL. Extra args:

    Args:
        prototypes: a factory ``prototypes(n_channels=, seq_len=) -> KeyPrototypes`` (Hydra ``_partial_``) or a module.
        kpl_weight: weight of the prototype objective in the training loss (0 freezes nothing but trains the
            prototypes only through their initialisation; use ``model=diffusion_ts`` for "no KPL").
        init_prototypes: start the banks at training snippets when the datamodule is ready.
    """

    def __init__(self, n_channels: int | None = None, max_len: int | None = None, *,
                 prototypes: Callable[..., nn.Module] | nn.Module | None = None, kpl_weight: float = 1.0,
                 init_prototypes: bool = True, **kwargs: Any):
        if prototypes is None:
            raise ValueError("KProtoDiff needs prototypes= (tsdiff.nets.prototypes.KeyPrototypes with _partial_: true)")
        if kpl_weight < 0:
            raise ValueError(f"KProtoDiff kpl_weight must be >= 0, got {kpl_weight}")
        if n_channels is not None and max_len is not None:
            kpl = prototypes if isinstance(prototypes, nn.Module) else prototypes(n_channels=int(n_channels), seq_len=int(max_len))
            if not isinstance(kpl, KeyPrototypes) or (kpl.seq_len, kpl.n_channels) != (int(max_len), int(n_channels)):
                raise ValueError(f"KProtoDiff prototypes must be a KeyPrototypes over windows ({max_len}, {n_channels})")
            self.context_dim = kpl.token_dim  # the network's context width; a plain int may be set before Module init
        super().__init__(n_channels, max_len, **kwargs)  # checks the data facts
        self.save_hyperparameters(ignore=["net", "schedule", "prototypes"])
        self.kpl = kpl

    def on_datamodule_ready(self, datamodule) -> None:
        """Called by the train task before fitting: data statistics, and the banks start at training snippets."""
        super().on_datamodule_ready(datamodule)
        if self.hparams.init_prototypes:
            windows = torch.from_numpy(datamodule.train_array("train"))
            self.kpl.init_from(windows.to(self.kpl.banks[0].device), torch.Generator().manual_seed(int(self.hparams.seed)))

    # ------------------------------------------------------------------ model contract
    def context(self) -> torch.Tensor:
        return self.kpl.tokens().detach().unsqueeze(0)

    def project_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The prototype reconstruction of an estimate ``x0`` ``(B, L, C)`` (averaged over scales): where
        R-Sampling pulls (:mod:`tsdiff.sampling.reflection`)."""
        return self.kpl.project(x0)

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
