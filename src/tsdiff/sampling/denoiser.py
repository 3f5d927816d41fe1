"""The denoiser contract and the adapter the solvers use.

**Contract.** Any model is sampled through a callable ``denoise(x, t, cond=None) -> Tensor`` where ``x``
is the noisy batch in the model's diffusion space (any shape ``(batch, ...)``; tsdiff's time series are
``(batch, length, channels)``), ``t`` is a ``(batch,)`` tensor of *schedule* times (integer indices for
discrete schedules, floats in ``[t_min, 1]`` for SDEs) and ``cond`` is optional conditioning of any
kind (tensor, dict of tensors, ...), passed through untouched. The output has the shape of ``x`` and
is expressed in one declared parameterization: ``"x0"``, ``"eps"``, ``"score"`` or ``"v"``.

A model satisfies the contract of :mod:`tsdiff.sampling.contract` (``denoise``, ``schedule``,
``parameterization``, ``sample_shape``; optional ``decode``, ``cache_interface`` and ``default_solver``);
:func:`as_diffusion_model` gathers what the sampler needs from it.

**Adapter.** :class:`PredictionModel` wraps a denoiser with its schedule, cache policy and an optional
guidance hook, counts network evaluations and converts between parameterizations, so that solvers only
ask for ``x0``, ``eps`` or ``score`` at a time ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from tsdiff.caching.base import CachePolicy, NoCache
from tsdiff.diffusion.parameterization import check_parameterization, eps_to_score, from_x0, to_x0
from tsdiff.diffusion.schedules import NoiseSchedule
from tsdiff.sampling.contract import (DeclaresCache, Decodes, DrawsCondition, PrefersSolver, declares, missing_members,
                                      preferred_steps)


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor: ...


#: guidance(x0_hat, x_t, t, step) -> corrected x0_hat; applied to every prediction (e.g. reflection toward
#: prototypes, K-ProtoDiff). It runs inside the sampling loop for every solver.
Guidance = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class DiffusionModelSpec:
    """What the sampler needs from a model, gathered in one place."""

    denoise: Callable[..., torch.Tensor]
    schedule: NoiseSchedule
    parameterization: str
    sample_shape: tuple[int, ...] | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    default_solver: str | None = None
    #: the model's preferred number of steps (``default_steps``), used when a sampler is given none
    default_steps: int | None = None
    module: torch.nn.Module | None = None
    #: the model's ``cache_interface`` (None when it declares none: caches reuse whole outputs)
    cache_interface: Callable[[], Any] | None = None
    #: the model's ``draw_condition(n, generator)`` (None: unconditional unless the caller gives ``cond``)
    draw_condition: Callable[..., Any] | None = None


def as_diffusion_model(
    model: Any = None,
    *,
    denoiser: Callable | None = None,
    schedule: NoiseSchedule | None = None,
    parameterization: str | None = None,
    sample_shape: tuple[int, ...] | None = None,
) -> DiffusionModelSpec:
    """Build a :class:`DiffusionModelSpec` from a model object or from a bare denoiser + schedule."""
    if model is None and denoiser is None:
        raise ValueError("give a trained model (score_model=/model=) or a denoiser= with its schedule=")
    if model is not None and denoiser is not None:
        raise ValueError("give either a model or a denoiser, not both")
    cache_interface = draw_condition = None
    if model is not None:
        missing = missing_members(model)
        if missing:
            raise TypeError(
                f"{type(model).__name__} does not follow the tsdiff denoiser contract: missing "
                f"{', '.join(missing)}. Wrap a plain callable with denoiser=..., schedule=..., parameterization=..."
            )
        denoise = model.denoise
        schedule = schedule or model.schedule
        parameterization = parameterization or model.parameterization
        sample_shape = sample_shape or model.sample_shape
        decode = model.decode if declares(model, Decodes) else None
        default_solver = model.default_solver if declares(model, PrefersSolver) else None
        default_steps = preferred_steps(model)
        cache_interface = model.cache_interface if declares(model, DeclaresCache) else None
        draw_condition = model.draw_condition if declares(model, DrawsCondition) else None
        module = model if isinstance(model, torch.nn.Module) else None
    else:
        if schedule is None or parameterization is None:
            raise ValueError("a bare denoiser needs schedule= and parameterization=")
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as denoiser(x, t, cond)")
        denoise, decode, default_solver, default_steps = denoiser, None, None, None
        module = denoiser if isinstance(denoiser, torch.nn.Module) else None
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a tsdiff NoiseSchedule, got {type(schedule).__name__}")
    check_parameterization(parameterization)
    return DiffusionModelSpec(
        denoise=denoise,
        schedule=schedule,
        parameterization=parameterization,
        sample_shape=tuple(sample_shape) if sample_shape is not None else None,
        decode=decode,
        default_solver=default_solver,
        default_steps=default_steps,
        module=module,
        cache_interface=cache_interface,
        draw_condition=draw_condition,
    )


class PredictionModel:
    """Solver-facing view of a denoiser: ``x0(x, t)``, ``eps(x, t)``, ``score(x, t)`` at a scalar time.

    ``t`` given to these methods is a 0-d tensor (one time for the whole batch); the denoiser receives
    it expanded to ``(batch,)``. Every evaluation goes through the cache policy and is counted in
    ``nfe``.
    """

    def __init__(
        self,
        spec: DiffusionModelSpec,
        cond: Any = None,
        cache: CachePolicy | None = None,
        guidance: Guidance | None = None,
    ):
        self.spec = spec
        self.schedule = spec.schedule
        self.cond = cond
        self.cache = cache if cache is not None else NoCache()
        self.guidance = guidance
        self.nfe = 0
        self._coef: dict[float, tuple[float, float]] = {}

    def alpha_sigma(self, t: torch.Tensor) -> tuple[float, float]:
        """``(alpha_t, sigma_t)`` as floats, memoised per time (solvers ask several times per step)."""
        key = float(t)
        coef = self._coef.get(key)
        if coef is None:
            coef = self._coef[key] = self.schedule.alpha_sigma64(t)
        return coef

    def _raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.reshape(1).expand(x.shape[0]).to(x.device)
        out = self.cache(self._denoise, x, tb, self.cond, self.nfe)
        self.nfe += 1
        if out.shape != x.shape:
            raise ValueError(
                f"the denoiser returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; "
                "the sample shape does not match the model (check sample_shape / the model's channels and length)"
            )
        return out

    def _denoise(self, x, t, cond):
        return self.spec.denoise(x, t, cond)

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        x0 = to_x0(self._raw(x, t), self.spec.parameterization, x, alpha, sigma)
        if self.guidance is not None:
            x0 = self.guidance(x0, x, t, self.nfe - 1)
        return x0

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        if self.spec.parameterization == "eps" and self.guidance is None:
            return self._raw(x, t)
        return from_x0(self.x0(x, t), "eps", x, alpha, sigma)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        if self.spec.parameterization == "score" and self.guidance is None:
            return self._raw(x, t)
        return eps_to_score(self.eps(x, t), x, alpha, sigma)
