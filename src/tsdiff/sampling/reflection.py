"""Reflection Sampling (R-Sampling, K-ProtoDiff, AAAI 2026, Fig. 1 bottom right) as a solver, so that any model
can use it (``python cmd/sample.py sampler=reflection``).

In the final part of the reverse process -- the last ``fraction`` (the paper's lambda) of the transitions --
each denoising step ``x_t -> x_s`` is followed by ``repeats`` reflections: re-noise with the forward kernel
``x_t' ~ q(x_t | x_s) = N((alpha_t / alpha_s) x_s, (sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) I)`` and denoise
again from ``x_t'``. During a reflection the estimate ``x0_hat`` is pulled toward the model's prototype
context, ``x0_hat + pull (P(x0_hat) - x0_hat)``, when the model offers ``project_x0`` (K-ProtoDiff: the
prototype reconstruction of the estimate); a model without it is reflected without the pull.

The transition is the ancestral step (``base="ddpm"``) or a strided DDIM step (``base="ddim"``, with ``eta``)
on the sampler's time grid. The re-noising uses the true forward kernel -- the authors' code instead calls
the denoiser a second time on the same input, which is not a reflection. Cost: ``repeats`` extra network
evaluations per reflected transition (:func:`extra_evaluations`); the sampler's ``network_evaluations``
counts them. With ``fraction=0`` this is exactly the base solver (same seed, same samples).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol, runtime_checkable

import torch

from tsdiff.sampling.contract import declares
from tsdiff.sampling.denoiser import PredictionModel
from tsdiff.sampling.solvers import _emit, _next_time, ancestral_step, ddim_step
from tsdiff.utils import randn_like

__all__ = ["reflection", "extra_evaluations", "ProjectsEstimate"]

log = logging.getLogger(__name__)

BASES = ("ddpm", "ddim")


@runtime_checkable
class ProjectsEstimate(Protocol):
    """A model that offers a point to pull an estimate toward (K-ProtoDiff: its prototype reconstruction)."""

    def project_x0(self, x0: torch.Tensor) -> torch.Tensor: ...


def reflected_transitions(num_times: int, fraction: float) -> int:
    """How many of the ``num_times - 1`` noisy-to-noisy transitions (the last ones) are reflected."""
    return int(round(fraction * max(num_times - 1, 0)))


def extra_evaluations(num_times: int, fraction: float, repeats: int) -> int:
    """Network evaluations R-Sampling adds per sample chunk to a ``num_times``-step base solver."""
    return repeats * reflected_transitions(num_times, fraction)


def renoise(model: PredictionModel, x_s: torch.Tensor, s: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
    """``x_t ~ q(x_t | x_s)`` for ``s < t`` (the forward transition between two grid times)."""
    a_t, s_t = model.alpha_sigma(t)
    a_s, s_s = model.alpha_sigma(s)
    ratio = a_t / a_s
    return ratio * x_s + math.sqrt(max(s_t**2 - ratio**2 * s_s**2, 0.0)) * randn_like(x_s, generator)


@torch.no_grad()
def reflection(model: PredictionModel, x: torch.Tensor, times: torch.Tensor, *, base: str = "ddpm", eta: float = 0.0,
               fraction: float = 0.2, repeats: int = 1, pull: float = 0.1, generator=None, callback=None) -> torch.Tensor:
    """R-Sampling over ``times`` (see the module docstring); the solver signature of :mod:`tsdiff.sampling.solvers`.

    Args:
        base: ``"ddpm"`` (ancestral) or ``"ddim"`` (with ``eta``) transitions.
        fraction: share lambda of the transitions, counted from the end, that are reflected (0: none).
        repeats: reflections per reflected transition.
        pull: strength of the pull toward ``project_x0`` during reflections, in ``[0, 1]``.
    """
    if base not in BASES:
        raise ValueError(f"reflection base must be one of {', '.join(BASES)}, got {base!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"reflection fraction (lambda) must lie in [0, 1], got {fraction}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 0:
        raise ValueError(f"reflection repeats must be a non-negative integer, got {repeats!r}")
    if not 0.0 <= pull <= 1.0:
        raise ValueError(f"reflection pull must lie in [0, 1], got {pull}")
    if eta < 0:
        raise ValueError(f"reflection eta must be >= 0, got {eta}")
    module = model.spec.module
    project = module.project_x0 if pull > 0 and module is not None and declares(module, ProjectsEstimate) else None

    def step(x_t, x0, t, s):
        if base == "ddpm":
            return ancestral_step(model, x_t, x0, t, s, generator=generator)
        return ddim_step(model, x_t, x0, t, s, eta=eta, generator=generator)

    first = len(times) - 1 - reflected_transitions(len(times), fraction)
    extra = extra_evaluations(len(times), fraction, repeats)
    log.info("R-Sampling: %d reflections on %d steps = %d extra network evaluations per chunk (+%.0f%%), pull %s",
             extra, len(times), extra, 100.0 * extra / len(times), "on" if project is not None else "off (no project_x0)")
    for i, t in enumerate(times):
        s = _next_time(times, i)
        x0 = model.x0(x, t)
        if s is None:
            x = x0
        else:
            x_s = step(x, x0, t, s)
            for _ in range(repeats if i >= first else 0):
                x_t = renoise(model, x_s, s, t, generator)
                x0 = model.x0(x_t, t)
                if project is not None:
                    x0 = x0 + pull * (project(x0) - x0)
                x_s = step(x_t, x0, t, s)
            x = x_s
        _emit(callback, i, t, x, x0)
    return x
