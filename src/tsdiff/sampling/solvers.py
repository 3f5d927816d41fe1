"""Solvers: plain functions over the denoiser contract.

Every solver has the signature ``solver(model, x, times, *, generator=None, callback=None, **options)``:

* ``model`` is a :class:`~tsdiff.sampling.denoiser.PredictionModel` (gives ``x0``/``eps``/``score`` at a
  time and knows the schedule),
* ``x`` is the starting noise at ``times[0]``,
* ``times`` are the decreasing evaluation times from ``schedule.sample_times``; the solver makes one step
  per entry, the last one landing on clean data (``alpha = 1, sigma = 0``),
* ``callback(info)`` is called after every step with ``step``, ``t``, ``x`` (the new state) and ``x0``.

Each uses exactly one network evaluation per time (``len(times)`` in total) except ``pf_ode`` with
``order=2`` (Heun), which uses two for all but the last step. Step coefficients are computed in float64.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tsdiff.sampling.denoiser import PredictionModel
from tsdiff.utils import randn_like

Callback = Callable[[dict[str, Any]], None]


def _next_time(times: torch.Tensor, i: int) -> torch.Tensor | None:
    return times[i + 1] if i + 1 < len(times) else None


def _alpha_sigma_next(model: PredictionModel, s: torch.Tensor | None) -> tuple[float, float]:
    return (1.0, 0.0) if s is None else model.alpha_sigma(s)


def _emit(callback: Callback | None, i: int, t, x, x0) -> None:
    if callback is not None:
        callback({"step": i, "t": t, "x": x, "x0": x0})


def _gaussian_posterior(a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[float, float, float]:
    """Coefficients of q(x_s | x_t, x_0) = N(c_xt x_t + c_x0 x_0, var) for s < t.

    General form for any Gaussian diffusion (Kingma et al. 2021, eq. 20-22); for a discrete schedule and
    consecutive steps it is DDPM's posterior (Ho et al. 2020, eq. 6-7).
    """
    a_ts = a_t / a_s
    var_ts = max(s_t**2 - a_ts**2 * s_s**2, 0.0)
    c_xt = a_ts * s_s**2 / s_t**2
    c_x0 = a_s * var_ts / s_t**2
    var = var_ts * s_s**2 / s_t**2
    return c_xt, c_x0, var


@torch.no_grad()
def ddpm(model: PredictionModel, x: torch.Tensor, times: torch.Tensor, *, generator=None, callback=None) -> torch.Tensor:
    """Ancestral sampling ``x_s ~ q(x_s | x_t, x0_hat)`` (Ho et al. 2020, Alg. 2, eq. 6-7).

    With every training step in ``times`` this is exactly DDPM; with fewer it is ancestral sampling on a
    respaced schedule (equal to DDIM with ``eta = 1``). Valid for discrete and continuous schedules.
    """
    for i, t in enumerate(times):
        s = _next_time(times, i)
        x0 = model.x0(x, t)
        x = x0 if s is None else ancestral_step(model, x, x0, t, s, generator=generator)
        _emit(callback, i, t, x, x0)
    return x


def ancestral_step(model: PredictionModel, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
                   generator=None) -> torch.Tensor:
    """One ancestral transition ``x_s ~ q(x_s | x_t, x0_hat)`` from time ``t`` to ``s < t`` (Ho et al. 2020, eq. 6-7)."""
    a_t, s_t = model.alpha_sigma(t)
    a_s, s_s = model.alpha_sigma(s)
    c_xt, c_x0, var = _gaussian_posterior(a_t, s_t, a_s, s_s)
    return c_xt * x + c_x0 * x0 + math.sqrt(var) * randn_like(x, generator)


def ddim_step(model: PredictionModel, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
              eta: float = 0.0, generator=None) -> torch.Tensor:
    """One DDIM transition from ``t`` to ``s < t`` (Song, Meng & Ermon 2021, eq. 12 and 16)."""
    a_t, s_t = model.alpha_sigma(t)
    a_s, s_s = model.alpha_sigma(s)
    eps = (x - a_t * x0) / s_t
    _, _, var = _gaussian_posterior(a_t, s_t, a_s, s_s)
    c = eta * math.sqrt(var)
    x = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
    return x + c * randn_like(x, generator) if c > 0 else x


@torch.no_grad()
def ddim(model: PredictionModel, x: torch.Tensor, times: torch.Tensor, *, eta: float = 0.0, generator=None, callback=None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12): ``x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z``.

    ``c = eta * sqrt(Var q(x_s | x_t, x_0))`` (their eq. 16), so ``eta = 0`` is the deterministic sampler
    and ``eta = 1`` matches ancestral sampling.
    """
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    for i, t in enumerate(times):
        s = _next_time(times, i)
        x0 = model.x0(x, t)
        x = x0 if s is None else ddim_step(model, x, x0, t, s, eta=eta, generator=generator)
        _emit(callback, i, t, x, x0)
    return x


@torch.no_grad()
def dpm_solver_pp(
    model: PredictionModel,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    generator=None,
    callback=None,
) -> torch.Tensor:
    """DPM-Solver++ multistep in data-prediction form (Lu et al. 2022, "DPM-Solver++", eq. 8 and Alg. 2).

    With ``h = lambda_s - lambda_t`` and ``lambda = log(alpha / sigma)``:

    * order 1: ``x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0_t`` (= DDIM, eta 0);
    * order 2: the same with ``D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev``, ``r = h_prev / h``.

    The first step is first order (no history), and so is the last step onto clean data, where
    ``h`` is infinite. With ``lower_order_final`` (default) the step onto the last grid time is first
    order too: there ``h`` jumps (sigma falls to its minimum) and a large ``1/r`` extrapolation overshoots,
    as Lu et al. observe for few-step sampling (their code's ``lower_order_final``). Deterministic: ``generator`` is unused. Works on discrete and continuous schedules.
    """
    if order not in (1, 2):
        raise ValueError(f"dpm_solver++ order must be 1 or 2, got {order}")
    x0_prev: torch.Tensor | None = None
    h_prev: float | None = None
    for i, t in enumerate(times):
        s = _next_time(times, i)
        a_t, s_t = model.alpha_sigma(t)
        x0 = model.x0(x, t)
        if s is None:
            x = x0
        else:
            a_s, s_s = model.alpha_sigma(s)
            h = math.log(a_s / s_s) - math.log(a_t / s_t)
            last_finite = i == len(times) - 2
            if order == 2 and x0_prev is not None and not (lower_order_final and last_finite):
                r = h_prev / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            else:
                d = x0
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0
        _emit(callback, i, t, x, x0)
    return x


def _require_sde(model: PredictionModel, solver: str) -> None:
    if getattr(model.schedule, "kind", None) != "continuous" or not hasattr(model.schedule, "sde"):
        raise ValueError(
            f"solver '{solver}' integrates an SDE and needs a continuous schedule (VPSDE or VESDE), got "
            f"{model.schedule!r}; use 'ddpm', 'ddim' or 'dpm_solver++' for discrete schedules"
        )


@torch.no_grad()
def euler_maruyama(model: PredictionModel, x: torch.Tensor, times: torch.Tensor, *, generator=None, callback=None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """Euler–Maruyama on the reverse-time SDE ``dx = [f(t) x - g(t)^2 score] dt + g(t) dw_bar``
    (Song et al. 2021, eq. 6; their "reverse diffusion" predictor). The last evaluation returns the
    Tweedie denoised estimate ``x0_hat`` instead of a final noisy step (their "denoise at the end").

    ``noise``: optional standard normals ``(len(times) - 1, *x.shape)`` used instead of drawing from
    ``generator`` (step ``i`` uses ``noise[i]``) -- e.g. the increments of one Brownian path summed onto
    a coarser grid, so that samplers with different step counts can be compared sample by sample
    (``tsdiff.sampling.coarsen_brownian_noise``).
    """
    _require_sde(model, "euler_maruyama")
    if noise is not None and tuple(noise.shape) != (len(times) - 1, *x.shape):
        raise ValueError(
            f"euler_maruyama noise must have shape (steps - 1, *x.shape) = {(len(times) - 1, *x.shape)}, "
            f"got {tuple(noise.shape)}; with explicit noise sample one chunk (num_samples <= sample_batch_size)"
        )
    for i, t in enumerate(times):
        s = _next_time(times, i)
        if s is None:
            x0 = model.x0(x, t)
            x = x0
        else:
            dt = float(t) - float(s)
            f, g = model.schedule.sde(t.double())
            f, g = float(f), float(g)
            score = model.score(x, t)
            x0 = None
            z = randn_like(x, generator) if noise is None else noise[i].to(x.device, x.dtype)
            x = x - (f * x - g * g * score) * dt + g * math.sqrt(dt) * z
        _emit(callback, i, t, x, x0)
    return x


@torch.no_grad()
def pf_ode(model: PredictionModel, x: torch.Tensor, times: torch.Tensor, *, order: int = 1, generator=None, callback=None) -> torch.Tensor:
    """Probability-flow ODE ``dx/dt = f(t) x - g(t)^2 score / 2`` (Song et al. 2021, eq. 13), integrated
    with Euler (``order=1``) or Heun (``order=2``, Karras et al. 2022, Alg. 1) from ``times[0]`` to
    ``times[-1]``, then denoised with ``x0_hat``. Deterministic.
    """
    _require_sde(model, "pf_ode")
    if order not in (1, 2):
        raise ValueError(f"pf_ode order must be 1 or 2, got {order}")

    def velocity(x_, t_):
        f, g = model.schedule.sde(t_.double())
        return float(f) * x_ - 0.5 * float(g) ** 2 * model.score(x_, t_)

    for i, t in enumerate(times):
        s = _next_time(times, i)
        if s is None:
            x0 = model.x0(x, t)
            x = x0
        else:
            dt = float(s) - float(t)  # negative
            v = velocity(x, t)
            x_euler = x + v * dt
            x = x_euler if order == 1 else x + 0.5 * (v + velocity(x_euler, s)) * dt
            x0 = None
        _emit(callback, i, t, x, x0)
    return x


#: Solver names accepted by the sampler (and by ``solver=`` Hydra overrides). A callable with the same
#: signature may be passed instead of a name.
SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpm_solver++": dpm_solver_pp,
    "dpmpp": dpm_solver_pp,
    "euler_maruyama": euler_maruyama,
    "pf_ode": pf_ode,
}


def get_solver(solver: str | Callable) -> Callable[..., torch.Tensor]:
    if callable(solver):
        return solver
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver '{solver}'; choose one of {', '.join(sorted(SOLVERS))} or pass a function") from None


def solver_label(solver: str | Callable) -> str:
    """A solver's name for reports: the registered name of a function (or of a partial of one)."""
    if isinstance(solver, str):
        return solver
    func = getattr(solver, "func", solver)  # functools.partial (Hydra _partial_: true)
    for name, fn in SOLVERS.items():
        if fn is func:
            return name
    return getattr(func, "__name__", "custom")


def coarsen_brownian_noise(noise: torch.Tensor, times: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Standard normals for Euler–Maruyama on a coarser grid, driven by the *same* Brownian path.

    ``noise`` holds the ``len(times) - 1`` standard normals of a fine grid ``times`` (increments
    ``dW_k = sqrt(dt_k) noise[k]``). The coarse grid keeps every ``m``-th time, ``m = (len(times) - 1) /
    (num_steps - 1)`` (it must be an integer; log-SNR and uniform grids of ``num_steps`` points are exactly
    these subsets), and its normals are the summed increments over each block divided by
    ``sqrt(block length)``: the coarse sampler sees the Brownian motion the fine one saw.
    """
    fine = len(times) - 1
    if num_steps < 2 or fine % (num_steps - 1):
        raise ValueError(
            f"a {num_steps}-point grid is not a subset of the {len(times)}-point grid; use num_steps - 1 dividing {fine}"
        )
    m = fine // (num_steps - 1)
    dt = (times[:-1] - times[1:]).double().abs()
    ones = [1] * (noise.dim() - 1)
    dw = (noise.double() * dt.sqrt().view(-1, *ones)).reshape(fine // m, m, *noise.shape[1:])
    block = dt.view(-1, m).sum(1).sqrt().view(-1, *ones)
    return (dw.sum(1) / block).to(noise.dtype)
