"""Exact denoisers for Gaussian data N(mu, s^2 I): the ground truth the solver tests drive."""

from __future__ import annotations

import torch

from tsdiff.diffusion.parameterization import from_x0


class GaussianDenoiser:
    """E[x0 | x_t] for x0 ~ N(mu, s^2) per coordinate, returned in a chosen parameterization."""

    def __init__(self, schedule, mu: float, s: float, parameterization: str = "x0"):
        self.schedule, self.mu, self.s, self.parameterization = schedule, mu, s, parameterization
        self.calls = 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        alpha, sigma = self.schedule.alpha_sigma(t)
        a = alpha.to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        sg = sigma.to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        xd = x.to(torch.float64)
        x0 = self.mu + a * self.s**2 / (a**2 * self.s**2 + sg**2) * (xd - a * self.mu)
        out = from_x0(x0, self.parameterization, xd, a.reshape(-1), sg.reshape(-1))
        return out.to(x.dtype)

    def exact_ode_map(self, x_T: torch.Tensor, t_T) -> torch.Tensor:
        """Where the probability-flow ODE takes x_T (at time t_T) at t = 0: a linear map for Gaussians."""
        alpha, sigma = self.schedule.alpha_sigma64(t_T)
        return self.mu + self.s / (alpha**2 * self.s**2 + sigma**2) ** 0.5 * (x_T - alpha * self.mu)
