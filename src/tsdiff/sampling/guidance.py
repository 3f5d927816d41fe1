"""Guidance hooks for :class:`~tsdiff.sampling.DiffusionSampler` (``sampler.guidance`` in the configs).

A hook is any callable ``guidance(x0_hat, x_t, t, step) -> x0_hat`` applied to every prediction of the
denoiser, in diffusion space, before the solver uses it. It is built by Hydra from ``sampler.guidance``::

    python cmd/sample.py model_id=latest sampler.guidance._target_=tsdiff.sampling.guidance.ClipDenoised

and passed to both sides of every comparison of ``cmd/benchmark_cache.py`` / ``cmd/ablation_cache.py``.
"""

from __future__ import annotations

import torch

__all__ = ["ClipDenoised"]


class ClipDenoised:
    """Clip the predicted clean sample to ``[low, high]``: DDPM's ``clip_denoised`` (Ho et al. 2020, kept by
    Diffusion-TS), meaningful when the diffusion space is the data space scaled to a known range (a time-domain
    model on ``datamodule.scaling=minmax`` data: ``[-1, 1]``). In whitened frequency coordinates the range
    of a component is not ``[-1, 1]``, so do not use it with ``fourier_transform=true`` models."""

    def __init__(self, low: float = -1.0, high: float = 1.0) -> None:
        if not float(low) < float(high):
            raise ValueError(f"ClipDenoised needs low < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        return x0_hat.clamp(self.low, self.high)

    def __repr__(self) -> str:
        return f"ClipDenoised(low={self.low}, high={self.high})"
