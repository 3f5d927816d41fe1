"""Cascaded sampling: a model whose sample is the condition of another, each stage through the shared
:class:`~tsdiff.sampling.DiffusionSampler`.

A model declares its stages with ``cascade_stages()`` (:class:`~tsdiff.sampling.contract.Cascades`);
:class:`CascadeSampler` runs them in order from ONE generator (same seed, same samples), feeding stage
``i``'s decoded samples through stage ``i + 1``'s ``condition`` to make its ``cond``. Solver, cache,
guidance hook and batch size apply to every stage; the number of steps is shared or given per stage
(``stage_steps``, e.g. ``sampler.stage_steps=[20,100]`` on the command line). Its ``sample()`` has the
signature of ``DiffusionSampler.sample`` so that the tasks need not know which one they hold.

Example (L2D-Diff, Sec. "Inference"): ``r_0 ~ latent DDPM`` then ``x_0 ~ data DDPM | F(r_0)``::

    sampler = CascadeSampler(model.cascade_stages(), solver="dpm_solver_pp", progress=False)
    x = sampler.sample(256, 20, seed=0)         # 20 steps per stage
    sampler.last_stats.stages                   # per-stage steps, evaluations and seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tsdiff.sampling.contract import Stage
from tsdiff.sampling.sampler import DiffusionSampler, SamplerStats
from tsdiff.utils import make_generator

__all__ = ["CascadeSampler", "CascadeStats"]


@dataclass
class CascadeStats(SamplerStats):
    """:class:`SamplerStats` of the whole cascade (steps, evaluations and time summed over the stages;
    ``cache`` of the last stage) plus one ``as_dict()`` per stage in ``stages``."""

    stages: list[dict[str, Any]] = field(default_factory=list)


class CascadeSampler:
    """Sample a cascade of :class:`~tsdiff.sampling.contract.Stage` s; ``sampler_kwargs`` go to every
    stage's :class:`~tsdiff.sampling.DiffusionSampler` (``solver``, ``cache``, ``sample_batch_size`` ...)."""

    def __init__(self, stages: Sequence[Stage], *, stage_steps: Sequence[int] | None = None, **sampler_kwargs: Any):
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        if stage_steps is not None:
            stage_steps = [int(s) for s in stage_steps]
            if len(stage_steps) != len(stages) or min(stage_steps) < 1:
                raise ValueError(f"stage_steps must give a positive number of steps for each of the {len(stages)} "
                                 f"stages ({', '.join(s.name for s in stages)}), got {stage_steps}")
        self.stages = list(stages)
        self.stage_steps = stage_steps
        self.num_diffusion_steps = sampler_kwargs.get("num_diffusion_steps")
        self.samplers = [DiffusionSampler(s.model, **sampler_kwargs) for s in self.stages]
        last = self.samplers[-1]
        self.cache, self.device, self.solver_name = last.cache, last.device, last.solver_name
        self.last_stats: CascadeStats | None = None

    @property
    def schedule(self):
        return self.samplers[-1].schedule

    def sample(self, num_samples: int, num_diffusion_steps: int | None = None, *, cond: Any = None,
               seed: int | None = None, generator: torch.Generator | None = None, decode: bool = True,
               return_stats: bool = False, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, CascadeStats]:
        """Samples of the last stage, ``(num_samples, *last_stage.sample_shape)``; ``cond`` goes to the
        first stage; ``decode`` applies to the last stage (earlier stages are always decoded)."""
        if seed is not None and generator is not None:
            raise ValueError("give seed= or generator=, not both")
        if kwargs.get("x_T") is not None:
            raise ValueError("x_T is not supported by a cascade (each stage draws its own starting noise)")
        kwargs.pop("x_T", None)
        gen = generator if generator is not None else make_generator(seed, self.device)
        out, per_stage = None, []
        for i, (stage, sampler) in enumerate(zip(self.stages, self.samplers)):
            stage_cond = cond if i == 0 else (stage.condition(out) if stage.condition is not None else None)
            steps = self.stage_steps[i] if self.stage_steps is not None else num_diffusion_steps
            out, stats = sampler.sample(num_samples, steps, cond=stage_cond, generator=gen, return_stats=True,
                                        decode=decode or i < len(self.stages) - 1, **kwargs)
            per_stage.append({"stage": stage.name, **stats.as_dict()})
        self.last_stats = CascadeStats(
            num_samples=num_samples,
            num_steps=sum(s["num_steps"] for s in per_stage),
            solver="+".join(dict.fromkeys(s["solver"] for s in per_stage)),
            network_evaluations=sum(s["network_evaluations"] for s in per_stage),
            wall_time_s=sum(s["wall_time_s"] for s in per_stage),
            cache=per_stage[-1]["cache"],
            stages=per_stage,
        )
        return (out, self.last_stats) if return_stats else out
