"""Conditional forecasting through the DiffusionSampler: condition once per window, sample, decode.

A forecaster satisfies the denoiser contract (``denoise``, ``schedule``, ``parameterization``,
``sample_shape``) and two more methods:

* ``forecast_condition(lookback) -> (cond, stats)``: the inference condition of ``(N, ...)`` context
  windows (a dict of tensors with first dimension ``N``) and whatever ``decode_forecast`` needs;
* ``decode_forecast(samples, stats) -> forecasts``: ``(S, N, *sample_shape)`` samples back to data space.

:class:`tsdiff.models.timediff.TimeDiff` is one (its condition is ``c`` of eq. 15, its decoding the
inverse instance normalization). Algorithm 2 of TimeDiff is ``solver="ddpm"`` over all K steps; the
paper's point forecast is the mean over ``S = 10`` samples.

``return_first_x0=True`` also returns the solver's first x0-prediction of every sample, decoded: at the
noisiest step ``E[x0 | x^K, c]`` is close to ``E[x0 | c]``, so their mean is the conditional-mean point
forecast at no extra cost, free of the ``var / S`` sampling noise the mean of ``S`` calibrated samples has.

``antithetic=True`` starts the samples of a window in pairs ``(x^K, -x^K)`` (antithetic variates). Every
sample keeps its exact marginal law, so the ensemble is still a sample of the model's forecast distribution,
but with a deterministic solver (DPM-Solver++) and a denoiser close to linear in ``x^K`` (the Gaussian skip
of TimeDiff) the pair's mean is nearly the conditional mean: the mean of ``S`` samples loses most of its
``var / S`` noise, so the paper's point forecast (the mean of 10 samples) keeps its accuracy once the samples
spread. Ancestral ``ddpm`` sampling draws fresh noise at every step, which antithetic starts do not pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tsdiff.sampling.sampler import DiffusionSampler, SamplerStats
from tsdiff.utils import make_generator

__all__ = ["sample_forecasts"]


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _antithetic_start(model: Any, n: int, num_samples: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Starting noise ``(n * S, *sample_shape)`` in window-major order, samples ``s`` and ``s + S/2`` opposite."""
    half = model.schedule.prior_std() * torch.randn((n, num_samples // 2, *model.sample_shape), generator=gen, device=device)
    return torch.cat([half, -half], dim=1).reshape(n * num_samples, *model.sample_shape)


def sample_forecasts(
    model: Any,
    lookback: torch.Tensor | np.ndarray,
    num_samples: int = 10,
    solver: str = "dpm_solver++",
    steps: int | None = None,
    seed: int | None = 0,
    sample_batch_size: int = 640,
    solver_kwargs: dict[str, Any] | None = None,
    return_stats: bool = False,
    return_first_x0: bool = False,
    antithetic: bool = False,
) -> Any:
    """Sample ``num_samples`` forecasts for each context window: returns ``(S, N, *sample_shape)``.

    The condition is computed once per window (eval mode), repeated ``S`` times and handed to the
    DiffusionSampler with ``seed``. ``steps=None`` walks every training step for ``ddpm`` (ancestral
    sampling) and takes 20 for the fast solvers. The module's train/eval mode is restored afterwards.
    ``antithetic=True`` (even ``num_samples``) pairs the starting noise of each window as ``(x^K, -x^K)``.
    Returns ``samples``, then (if asked) the first-step x0-predictions ``(S, N, *sample_shape)``, then the stats.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if antithetic and num_samples % 2:
        raise ValueError(f"antithetic sampling pairs the samples: num_samples must be even, got {num_samples} "
                         f"(or sample without pairs: antithetic=False, eval.antithetic=false)")
    device = _device_of(model)
    x = lookback if isinstance(lookback, torch.Tensor) else torch.as_tensor(np.asarray(lookback))
    x = x.to(device=device, dtype=torch.float32)
    if steps is None:
        steps = model.schedule.num_timesteps if solver == "ddpm" else 20
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cond, stats = model.forecast_condition(x)
            cond = {k: v.repeat_interleave(num_samples, dim=0) for k, v in cond.items()}
        sampler = DiffusionSampler(model=model, solver=solver, solver_kwargs=solver_kwargs,
                                   sample_batch_size=sample_batch_size, progress=False, device=device)
        first: list[torch.Tensor] = []

        def keep_first(info: dict[str, Any]) -> None:
            if info["step"] == 0:
                first.append(info["x0"].detach().clone())

        gen = make_generator(seed, device)
        x_T = _antithetic_start(model, x.shape[0], num_samples, gen, device) if antithetic else None
        samples, sampler_stats = sampler.sample(x.shape[0] * num_samples, steps, cond=cond, generator=gen, x_T=x_T,
                                                return_stats=True, callback=keep_first if return_first_x0 else None)
    finally:
        model.train(was_training)
    n = x.shape[0]

    def to_data(z: torch.Tensor) -> torch.Tensor:
        return model.decode_forecast(z.reshape(n, num_samples, *model.sample_shape).transpose(0, 1), stats)

    out: tuple = (to_data(samples),)
    if return_first_x0:
        out += (to_data(torch.cat(first, dim=0)),)
    if return_stats:
        out += (sampler_stats,)
    return out if len(out) > 1 else out[0]
