"""Noise schedules: discrete DDPM schedules and continuous VP/VE SDEs.

Every schedule describes a Gaussian forward process with marginals

    q(x_t | x_0) = N(alpha_t * x_0, sigma_t^2 I)                                  (Kingma et al. 2021, eq. 1)

and exposes exactly what the solvers need: ``alpha_sigma(t)``, the log signal-to-noise ratio
``lambda_t = log(alpha_t / sigma_t)`` (DPM-Solver's time variable), the prior, a sampling time grid and
the time fed to the network. Continuous schedules also give the SDE drift and diffusion
``dx = f(t) x dt + g(t) dw`` (Song et al. 2021, eq. 5). Schedules are stateless: no training state, no
``set_timesteps`` priming; arrays are computed in float64 and returned as float32 tensors (the
maths of cumulative products and logs is where float32 loses digits).

Time conventions
----------------
* Discrete schedules use integer indices ``k = 0 .. T-1`` (index ``k`` is the paper's step ``k + 1``).
* Continuous schedules use ``t in [t_min, 1]``.
* A solver's final transition goes to the clean state ``alpha = 1, sigma = 0``, written ``t_next = None``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from tsdiff.utils import append_dims

__all__ = [
    "NoiseSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "VPSDE",
    "VESDE",
]


class NoiseSchedule(ABC):
    """Interface shared by every schedule (see module docstring)."""

    #: "discrete" or "continuous"; solvers that need an SDE check this.
    kind: str = "abstract"

    @abstractmethod
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal scale ``alpha_t`` and noise std ``sigma_t`` at times ``t`` (same shape as ``t``)."""

    @abstractmethod
    def sample_times(self, num_steps: int, device: torch.device | str = "cpu", spacing: str = "uniform") -> torch.Tensor:
        """Decreasing times ``t_0 > ... > t_{N-1}`` at which a solver evaluates the network.

        ``spacing="uniform"`` spaces them evenly in time; ``"logsnr"`` evenly in ``lambda_t``
        (recommended for DPM-Solver, Lu et al. 2022, Sec. 3.3).
        """

    @abstractmethod
    def sample_training_times(self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        """Times drawn for one training batch, shape ``(batch_size,)``."""

    def prior_std(self) -> float:
        """Std of the Gaussian the reverse process starts from."""
        return 1.0

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return torch.log(alpha) - torch.log(sigma)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time value fed to a network's time embedding (float, shape of ``t``)."""
        return t.float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` as ``alpha_t x_0 + sigma_t noise``; ``t`` has shape ``(batch,)``."""
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"q_sample: t must have shape (batch,) = ({x0.shape[0]},), got {tuple(t.shape)}")
        alpha, sigma = self.alpha_sigma(t)
        alpha = append_dims(alpha.to(x0.dtype), x0.ndim)
        sigma = append_dims(sigma.to(x0.dtype), x0.ndim)
        return alpha * x0 + sigma * noise

    @staticmethod
    def _check_steps(num_steps: int) -> int:
        if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_diffusion_steps must be a positive integer, got {num_steps!r}")
        return int(num_steps)


class DiscreteSchedule(NoiseSchedule):
    """DDPM schedule given by its betas ``beta_1..beta_T`` (Ho et al. 2020, eq. 2 and 4)."""

    kind = "discrete"

    def __init__(self, betas: np.ndarray | list[float]):
        betas64 = np.asarray(betas, dtype=np.float64)
        if betas64.ndim != 1 or len(betas64) < 1:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if np.any(betas64 <= 0) or np.any(betas64 >= 1):
            raise ValueError("every beta must lie in (0, 1)")
        self.num_timesteps = len(betas64)
        alphas_cumprod = np.cumprod(1.0 - betas64)
        self._betas64 = betas64
        self._alphas_cumprod64 = alphas_cumprod
        self.betas = torch.from_numpy(betas64).float()
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod).float()
        self._sqrt_ab = torch.from_numpy(np.sqrt(alphas_cumprod))
        self._sqrt_1mab = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.num_timesteps})"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(t).round().long()
        if torch.any(idx < 0) or torch.any(idx >= self.num_timesteps):
            raise ValueError(f"discrete time index out of range [0, {self.num_timesteps - 1}]")
        flat = idx.reshape(-1).cpu()
        alpha = self._sqrt_ab[flat].reshape(idx.shape)
        sigma = self._sqrt_1mab[flat].reshape(idx.shape)
        device = torch.as_tensor(t).device
        return alpha.to(device=device, dtype=torch.float32), sigma.to(device=device, dtype=torch.float32)

    def alpha_sigma64(self, t) -> tuple[float, float]:
        """Float64 scalars for one time (used by solvers for their step coefficients)."""
        k = int(round(float(t)))
        return float(np.sqrt(self._alphas_cumprod64[k])), float(np.sqrt(1.0 - self._alphas_cumprod64[k]))

    def sample_times(self, num_steps: int, device="cpu", spacing: str = "uniform") -> torch.Tensor:
        n = self._check_steps(num_steps)
        if n > self.num_timesteps:
            raise ValueError(
                f"num_diffusion_steps={n} exceeds the model's {self.num_timesteps} training steps; "
                f"use at most {self.num_timesteps}"
            )
        if spacing == "uniform":
            grid = np.linspace(self.num_timesteps - 1, 0, n)
        elif spacing == "logsnr":
            lam = 0.5 * np.log(self._alphas_cumprod64 / (1.0 - self._alphas_cumprod64))
            targets = np.linspace(lam[-1], lam[0], n)
            # invert the monotone lambda(k) by interpolation, then round to valid indices
            grid = np.interp(targets, lam[::-1], np.arange(self.num_timesteps)[::-1])
        else:
            raise ValueError(f"unknown spacing '{spacing}'; use 'uniform' or 'logsnr'")
        idx = np.round(grid).astype(np.int64)
        idx[-1] = 0
        # keep the grid strictly decreasing after rounding (collisions happen at the low-noise end)
        for i in range(n - 2, -1, -1):
            idx[i] = max(idx[i], idx[i + 1] + 1)
        idx[0] = self.num_timesteps - 1
        for i in range(1, n):
            idx[i] = min(idx[i], idx[i - 1] - 1)
        return torch.as_tensor(idx, device=device, dtype=torch.long)

    def sample_training_times(self, batch_size: int, device="cpu", generator=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)


class LinearSchedule(DiscreteSchedule):
    """Linear betas from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4; L2D-Diff uses it)."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_timesteps < 1:
            raise ValueError("num_timesteps must be >= 1")
        self.beta_start, self.beta_end = beta_start, beta_end
        super().__init__(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


class CosineSchedule(DiscreteSchedule):
    """Cosine schedule ``alpha_bar(k) = cos^2(((k/T + s) / (1 + s)) pi / 2)`` (Nichol & Dhariwal 2021, eq. 17).

    The betas it implies are clipped into ``[beta_start, beta_end]``. Nichol & Dhariwal clip at 0.999
    only; TimeDiff (Shen & Kwok 2023, Sec. 5) trains K = 100 steps with betas between 1e-4 and 1e-1,
    which is what the clip range expresses (``CosineSchedule(100, beta_start=1e-4, beta_end=0.1)``).
    """

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008, beta_start: float = 0.0, beta_end: float = 0.999):
        if num_timesteps < 1:
            raise ValueError("num_timesteps must be >= 1")
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        betas = 1.0 - ab[1:] / ab[:-1]
        lo = max(beta_start, 1e-12)
        betas = np.clip(betas, lo, beta_end)
        self.s, self.beta_start, self.beta_end = s, beta_start, beta_end
        super().__init__(betas)


class ContinuousSchedule(NoiseSchedule):
    """Base of the SDE schedules: times in ``[t_min, 1]``."""

    kind = "continuous"
    t_min: float = 1e-3

    def sample_times(self, num_steps: int, device="cpu", spacing: str = "uniform") -> torch.Tensor:
        n = self._check_steps(num_steps)
        if spacing == "uniform":
            grid = np.linspace(1.0, self.t_min, n)
        elif spacing == "logsnr":
            lam_hi = float(self.log_snr(torch.tensor(self.t_min, dtype=torch.float64)))
            lam_lo = float(self.log_snr(torch.tensor(1.0, dtype=torch.float64)))
            grid = self.inverse_log_snr(np.linspace(lam_lo, lam_hi, n))
            grid[0], grid[-1] = 1.0, self.t_min
        else:
            raise ValueError(f"unknown spacing '{spacing}'; use 'uniform' or 'logsnr'")
        if n == 1:
            grid = np.array([1.0])
        return torch.as_tensor(grid, device=device, dtype=torch.float32)

    def sample_training_times(self, batch_size: int, device="cpu", generator=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        u = torch.rand((batch_size,), generator=generator, device=gen_device)
        return (self.t_min + (1.0 - self.t_min) * u).to(device)

    def alpha_sigma64(self, t) -> tuple[float, float]:
        a, s = self.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
        return float(a), float(s)

    def inverse_log_snr(self, lam: np.ndarray) -> np.ndarray:
        """Times with ``lambda_t = lam`` (vectorised bisection; lambda is decreasing in t)."""
        lam = np.asarray(lam, dtype=np.float64)
        lo, hi = np.full_like(lam, self.t_min), np.ones_like(lam)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(torch.from_numpy(mid)).numpy() > lam
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @abstractmethod
    def sde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear drift coefficient ``f(t)`` (drift is ``f(t) x``) and diffusion ``g(t)``."""


class VPSDE(ContinuousSchedule):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``, ``beta(t)`` linear
    (Song et al. 2021, eq. 11 and App. B). Defaults ``beta_min = 0.1, beta_max = 20`` as in the
    frequency-diffusion reference. ``alpha_t = exp(-t^2 (b1 - b0)/4 - t b0/2)``.

    ``t_min = 1e-5`` (so ``sigma_min ~ 1e-3``): with ``1e-3`` (``sigma_min ~ 0.01``) the final denoising
    step shrinks data components whose std is ~0.01 -- the high frequencies of standardized price
    series -- by up to 30% (measured with the exact Gaussian denoiser on the bundled stocks data).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"VPSDE needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t)
        t64 = t.double()
        log_alpha = self._log_alpha(t64)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha))
        out_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        return alpha.to(out_dtype), sigma.to(out_dtype)

    def sde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta_min + torch.as_tensor(t) * (self.beta_max - self.beta_min)
        return -0.5 * beta, torch.sqrt(beta)


class VESDE(ContinuousSchedule):
    """Variance-exploding SDE ``dx = sqrt(d sigma^2/dt) dw`` with ``sigma(t) = s_min (s_max/s_min)^t``
    (Song et al. 2021, eq. 9 and 30). Defaults ``sigma_min = 0.01, sigma_max = 2`` as in the
    frequency-diffusion reference (standardized data). The prior is ``N(0, sigma_max^2 I)``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 2.0, t_min: float = 1e-5):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), float(t_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t.double()
        out_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        return torch.ones_like(sigma).to(out_dtype), sigma.to(out_dtype)

    def prior_std(self) -> float:
        return self.sigma_max

    def sde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, sigma = self.alpha_sigma(t)
        g = sigma * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(sigma), g
