"""The model contract: what every tsdiff system offers so that the sampler, the caches and the tasks can
use it without reaching into it.

Required (:class:`DiffusionModel`):

* ``denoise(x, t, cond=None)`` -- the prediction for noisy ``x`` (diffusion space, ``(batch, ...)``) at
  schedule times ``t`` ``(batch,)``, in the declared ``parameterization`` (``x0``, ``eps``, ``score``, ``v``);
* ``schedule`` -- its :class:`~tsdiff.diffusion.schedules.NoiseSchedule`;
* ``parameterization`` -- see above;
* ``sample_shape`` -- one sample's shape in diffusion space, without the batch dimension.

Optional, each declared by offering the method (a structural check, :func:`declares`):

* ``encode(x)`` / ``decode(z)`` (:class:`Codec`) -- data space <-> diffusion space (e.g. whitened DFT);
  without them the diffusion space is the data space;
* ``cache_interface()`` (:class:`DeclaresCache`) -- what a cache policy may use
  (:class:`~tsdiff.caching.interface.CacheInterface`); without it caches reuse whole denoiser outputs;
* ``default_solver`` (:class:`PrefersSolver`) -- the solver name a sampler uses for ``solver="auto"``;
* ``draw_condition(n, generator)`` (:class:`DrawsCondition`) -- the model's own per-sample ``cond`` drawn from
  a prior it learned (K-ProtoDiff: which key prototypes each sample is generated from); the sampler draws
  it, seeded, for every chunk that the caller gives no ``cond``;
* ``default_steps`` (a positive int attribute, :func:`preferred_steps`) -- the number of steps a sampler
  takes when it is given none (``sampler=auto`` in the commands);
* ``cascade_stages()`` (:class:`Cascades`) -- a list of :class:`Stage` s: the model is sampled as a cascade,
  each stage a diffusion model of its own whose (decoded) sample becomes the next stage's condition
  (L2D-Diff: latent code, then the series); :func:`tsdiff.tasks.sampler_cfg.build_sampler` then builds a
  :class:`~tsdiff.sampling.cascade.CascadeSampler`. The model itself still satisfies the contract as its
  last stage (given that stage's condition).

Adding a model family: satisfy this contract in its system and add one row to
``tests/unit/test_model_contract.py``; no registry, no edits to the sampler or the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from tsdiff.caching.interface import CacheInterface
from tsdiff.diffusion.schedules import NoiseSchedule


@runtime_checkable
class DiffusionModel(Protocol):
    schedule: NoiseSchedule
    parameterization: str
    sample_shape: tuple[int, ...]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor: ...


@runtime_checkable
class Codec(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Decodes(Protocol):
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DeclaresCache(Protocol):
    def cache_interface(self) -> CacheInterface | None: ...


@runtime_checkable
class PrefersSolver(Protocol):
    default_solver: str


@runtime_checkable
class DrawsCondition(Protocol):
    def draw_condition(self, n: int, generator: torch.Generator | None = None) -> Any: ...


def preferred_steps(model: Any) -> int | None:
    """The model's ``default_steps`` if it declares a positive integer one, else None."""
    steps = getattr(model, "default_steps", None)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        return steps
    return None


@dataclass
class Stage:
    """One stage of a cascade: ``model`` satisfies :class:`DiffusionModel`; ``condition`` maps the previous
    stage's (decoded) samples to this stage's ``cond`` (None: the stage is unconditional)."""

    name: str
    model: Any
    condition: Callable[[torch.Tensor], Any] | None = None


@runtime_checkable
class Cascades(Protocol):
    def cascade_stages(self) -> list[Stage]: ...


def declares(model: Any, part: type) -> bool:
    """Whether ``model`` offers the optional contract ``part`` (one of the protocols above)."""
    return isinstance(model, part)


def missing_members(model: Any) -> list[str]:
    """The required members of :class:`DiffusionModel` that ``model`` lacks (empty when it satisfies it)."""
    return [a for a in ("denoise", "schedule", "parameterization", "sample_shape") if not hasattr(model, a)]
