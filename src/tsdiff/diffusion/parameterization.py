"""Conversions between the quantities a denoiser may predict.

With ``x_t = alpha x_0 + sigma eps`` (see :mod:`tsdiff.diffusion.schedules`):

* ``eps = (x_t - alpha x0) / sigma``       * ``x0 = (x_t - sigma eps) / alpha``
* ``score = grad log q(x_t) = -eps / sigma`` (Tweedie; Song et al. 2021, eq. 7 with the Gaussian kernel)
* ``v = alpha eps - sigma x0``             (Salimans & Ho 2022, Sec. 4; valid for variance-preserving
  schedules with ``alpha^2 + sigma^2 = 1``)

``alpha``/``sigma`` are broadcast against ``x`` from shape ``(batch,)`` or scalars.
"""

from __future__ import annotations

import torch

from tsdiff.utils import append_dims

PARAMETERIZATIONS = ("x0", "eps", "score", "v")


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization '{name}'; choose one of {', '.join(PARAMETERIZATIONS)}")
    return name


def _b(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(c, device=x.device, dtype=x.dtype)
    return append_dims(c, x.ndim) if c.ndim >= 1 else c


def eps_to_x0(eps, x, alpha, sigma):
    return (x - _b(sigma, x) * eps) / _b(alpha, x)


def x0_to_eps(x0, x, alpha, sigma):
    return (x - _b(alpha, x) * x0) / _b(sigma, x)


def eps_to_score(eps, x, alpha, sigma):
    return -eps / _b(sigma, x)


def score_to_eps(score, x, alpha, sigma):
    return -_b(sigma, x) * score


def v_to_x0(v, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    return (a * x - s * v) / (a * a + s * s)


def x0_to_v(x0, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    eps = (x - a * x0) / s
    return a * eps - s * x0


def to_x0(pred: torch.Tensor, parameterization: str, x, alpha, sigma) -> torch.Tensor:
    """Convert a prediction in ``parameterization`` to the data prediction ``x0``."""
    if parameterization == "x0":
        return pred
    if parameterization == "eps":
        return eps_to_x0(pred, x, alpha, sigma)
    if parameterization == "score":
        return eps_to_x0(score_to_eps(pred, x, alpha, sigma), x, alpha, sigma)
    if parameterization == "v":
        return v_to_x0(pred, x, alpha, sigma)
    check_parameterization(parameterization)
    raise AssertionError  # pragma: no cover


def from_x0(x0: torch.Tensor, parameterization: str, x, alpha, sigma) -> torch.Tensor:
    """Express the data prediction ``x0`` in ``parameterization``."""
    if parameterization == "x0":
        return x0
    if parameterization == "eps":
        return x0_to_eps(x0, x, alpha, sigma)
    if parameterization == "score":
        return eps_to_score(x0_to_eps(x0, x, alpha, sigma), x, alpha, sigma)
    if parameterization == "v":
        return x0_to_v(x0, x, alpha, sigma)
    check_parameterization(parameterization)
    raise AssertionError  # pragma: no cover
