"""E2-CRF's trigger: what reusing a cached computation once more is predicted to cost the *sample*.

For a token (or a whole sample on the step path) the predicted deviation of one more reuse is
``g = phi * kappa * m * u * rms_c(omega * F)``, in units of the component's data std:

* ``u``: relative change of the network input since the last recompute (:meth:`ReusePricer.intensity`);
* ``kappa`` (per sample) and ``m`` (per token): output drift per unit input change, measured at every
  refresh by comparing a would-be reuse with the fresh output (error feedback, :meth:`ReusePricer.measure`);
* ``omega(t)``: how far an output error at this noise level moves the final sample (the model's
  ``output_sensitivity``; ``s / sqrt(s^2 + 1)``-type defaults for plain denoisers);
* ``phi = 1 - exp(-|d lambda|)``: the weight of the data prediction in a first-order step
  (``lambda = log(alpha / sigma)``), so the price does not depend on the number of steps.

Dividing by the energy weight ``w_i`` (:meth:`ReusePricer.energy_weights`) expresses it in units of the
sample's rms; a token is recomputed when its accumulated deviation passes ``tau_0``. Measurements behind
these choices: ``docs/e2crf.md``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

EPS = 1e-8

#: a time-domain model gets the tau_0 advice once per process (docs/e2crf.md, "Limits")
_TIME_DOMAIN_WARNED = False

#: ``tau_0="auto"`` (the default): the threshold measured for each kind of coordinates (docs/e2crf.md). The
#: frequency value keeps the relative L2 to uncached samples near 0.1 or below at >= 3x (batch 64, 100 steps)
#: on the L = 96 stocks and L = 187 beats models (0.1 gave 5x at rel. L2 0.2). The pricing assumes decorrelated
#: coordinates, which whitened frequency components are; time-domain values are strongly correlated, so the
#: same predicted deviation costs the sample more there.
TAU_0_FREQUENCY = 0.02
TAU_0_TIME = 0.01
#: with deterministic solvers a reuse competes with fewer steps of a second-order method (DPM-Solver++), whose
#: error falls faster: the measured winning threshold is lower (docs/e2crf.md, "Against fewer steps")
TAU_0_DETERMINISTIC = 0.01
DETERMINISTIC_SOLVERS = frozenset({"ddim", "dpm_solver++", "dpmpp", "pf_ode"})


def resolve_tau_0(tau_0: Any, frequency_domain: bool | None, solver: str | None = None) -> float:
    """``tau_0`` as a number: ``"auto"``/``None`` -> :data:`TAU_0_FREQUENCY` for frequency-domain models (and
    models that declare no domain; :data:`TAU_0_DETERMINISTIC` under a deterministic ``solver``),
    :data:`TAU_0_TIME` for time-domain ones; a number is checked and kept."""
    if tau_0 is None or tau_0 == "auto":
        if frequency_domain is False:
            return TAU_0_TIME
        return TAU_0_DETERMINISTIC if solver in DETERMINISTIC_SOLVERS else TAU_0_FREQUENCY
    check_number("tau_0", tau_0, 0.0, None)
    return float(tau_0)


def check_number(name: str, value: Any, lo: float, hi: float | None, *, integer: bool = False, lo_open: bool = False) -> None:
    """A clear error for an E2-CRF option out of its type or range (names both override spellings)."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    where = f"cache.{name} (alias cache_kwargs.{name})"
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{where} must be {kind}, got {value!r}")
    below = value <= lo if lo_open else value < lo
    if below or (hi is not None and value > hi):
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        rng = f"{lo_s}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{where}={value!r} is out of range: it must be {rng}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"cache.{name} (alias cache_kwargs.{name}) must be true or false, got {value!r}")


def warn_time_domain_once(frequency_domain: bool, tau_0: float) -> None:
    """The pricing assumes decorrelated (frequency) coordinates; on time-domain models it underestimates
    the error, so suggest a smaller ``tau_0`` once (measured in docs/e2crf.md)."""
    global _TIME_DOMAIN_WARNED
    if _TIME_DOMAIN_WARNED or frequency_domain or tau_0 <= 0.02:
        return
    _TIME_DOMAIN_WARNED = True
    log.warning(
        "E2-CRF on a time-domain model (fourier_transform=false): its reuse-error model assumes "
        "decorrelated (frequency) coordinates and underestimates the error here; measured at tau_0=0.1: "
        "relative L2 0.76 to uncached samples, at tau_0=0.01: 0.24 (2.5x faster). Consider "
        "cache.tau_0=0.01."
    )


class ReusePricer:
    """Prices of reuse for one sampling chunk, with the error-feedback state (``kappa``, ``m``).

    Args:
        schedule: the sampler's noise schedule (``alpha_sigma``), or None (then ``phi = omega = 1``).
        parameterization: the denoiser's output kind (used when there is no ``output_sensitivity``).
        output_sensitivity: the model's ``omega(t, ndim, alpha_sigma=...)`` or None (plain denoiser).
        data_std: per-component data std ``(L, C)`` or None (energy from the current input).
        per_sample: price whole samples (``(B, ...) -> (B,)``) instead of tokens (``(B, L, C) -> (B, L)``).
        energy_weighting: ``False`` gives ``w_i = 1`` (the ablation).
        patch: positions per token (a patched transformer): per-position quantities are pooled over each
            token's positions (mean square; the zero padding of the last patch is not counted).
    """

    def __init__(self, *, schedule: Any, parameterization: str, output_sensitivity: Callable[..., torch.Tensor] | None,
                 data_std: torch.Tensor | None, per_sample: bool, energy_weighting: bool, patch: int = 1):
        self.patch = int(patch)
        self.schedule, self.parameterization = schedule, parameterization
        self.output_sensitivity, self.data_std = output_sensitivity, data_std
        self.per_sample, self.energy_weighting = per_sample, energy_weighting
        self.kappa: torch.Tensor | None = None  # (B,) output drift per unit input change
        self.mult: torch.Tensor | None = None  # (B, L) per-token drift corrections (token path)
        self.sens: torch.Tensor | None = None  # omega at the current evaluation
        self.phi: torch.Tensor | None = None  # (B,) step weight 1 - exp(-|d lambda|)
        self.F_ref: torch.Tensor | None = None  # last network output (what a reuse is priced on)
        self._lam_prev: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None  # (1, L) energy weights from the data std
        self.drifts: list[float] = []

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.mult, self.kappa, self.sens, self.F_ref) if t is not None]

    @staticmethod
    def intensity(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-token relative input change ``|h - ref| / |ref|`` over the last dim -> (B, L)."""
        return (h - ref).norm(dim=-1) / (ref.norm(dim=-1) + EPS)

    @staticmethod
    def rms(v: torch.Tensor) -> torch.Tensor:
        return v.pow(2).mean(1).sqrt()

    def token_mean(self, v: torch.Tensor) -> torch.Tensor:
        """Per-position values ``(B, L)`` averaged over each token's positions -> ``(B, tokens)``."""
        p = self.patch
        if p == 1:
            return v
        length = v.shape[1]
        n_tok = -(-length // p)
        total = torch.nn.functional.pad(v, (0, n_tok * p - length)).view(v.shape[0], n_tok, p).sum(-1)
        count = torch.full((n_tok,), float(p), device=v.device, dtype=v.dtype)
        count[-1] = length - (n_tok - 1) * p
        return total / count
    def energy_weights(self, y: torch.Tensor) -> torch.Tensor:
        """``w_i = clip(sqrt(mean_j E_j / E_i), 1/16, 16)``, shape ``(1 or B, L)``; ``E_i`` is the token's
        mean square data std (the current input's when there is none). Converts a deviation in units of
        the token's own data std into units of the sample's rms: energetic tokens get lower thresholds."""
        length = y.shape[1]
        if not self.energy_weighting:
            return torch.ones(1, -(-length // self.patch), device=y.device)
        if self._weights is None or self._weights.shape[-1] != -(-length // self.patch):
            std = self.data_std
            fixed = std is not None and std.shape[0] == length
            energy = self.token_mean(std.pow(2).mean(-1)[None].to(y.device, torch.float32) if fixed else y.pow(2).mean(-1))
            w = (energy.mean(1, keepdim=True) / (energy + EPS)).sqrt().clamp(1.0 / 16.0, 16.0)
            if not fixed:
                return w  # follows the current input: not cached
            self._weights = w
        return self._weights

    def set_prices(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Step weight ``phi`` and output sensitivity ``omega`` at this evaluation."""
        batch = x.shape[0]
        t = t.reshape(-1).expand(batch) if t.numel() in (1, batch) else t
        ones = torch.ones(batch, device=x.device, dtype=torch.float32)
        if self.schedule is None:
            self.phi = ones
            self.sens = ones.view(batch, *([1] * (x.dim() - 1)))
            return
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha, sigma = alpha.to(x.device, torch.float32), sigma.to(x.device, torch.float32)
        lam = torch.log(alpha) - torch.log(sigma)
        self.phi = ones * 0.0 if self._lam_prev is None else 1.0 - torch.exp(-(lam - self._lam_prev).abs())
        self._lam_prev = lam
        if self.output_sensitivity is not None:
            self.sens = self.output_sensitivity(t, x.dim(), alpha_sigma=(alpha, sigma))
            return
        # plain denoiser: its output is x0 (or eps); unit data std assumed
        s = (sigma / alpha).view(batch, *([1] * (x.dim() - 1)))
        gain = s if self.parameterization == "eps" else torch.ones_like(s)
        self.sens = gain / torch.sqrt(s**2 + 1.0)

    def weighted(self, f: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rms_c(omega * f)`` per token ``(B, L, C) -> (B, L)`` (per sample ``(B, ...) -> (B,)``);
        ``f`` holds only batch rows ``rows`` when given."""
        sens = self.sens if rows is None or self.sens.shape[0] == 1 else self.sens.index_select(0, rows)
        w = sens * f
        if self.per_sample:
            return w.flatten(1).pow(2).mean(1).sqrt()
        return self.token_mean(w.pow(2).mean(-1)).sqrt()

    def harm(self, u: torch.Tensor) -> torch.Tensor:
        """Predicted deviation ``g`` one more reuse adds, from the relative input change ``u`` ((B, L) or (B,))."""
        scale = self.weighted(self.F_ref)
        g = self.phi.view(-1, *([1] * (u.dim() - 1))) * self.kappa.view(-1, *([1] * (u.dim() - 1))) * u * scale
        if self.mult is not None and u.dim() == 2:
            g = g * self.mult
        return g

    def measure(self, u: torch.Tensor, f_reuse: torch.Tensor, f_new: torch.Tensor, calibrate: bool,
                rows: torch.Tensor | None = None) -> None:
        """Error feedback: compare the output drift a reuse would have had (``f_reuse - f_new``) with the
        prediction from ``u``; move ``kappa`` (rows ``rows``, all when None) to the observed ratio
        (geometric mean of old and new) and each ``m_i`` by ``clip(sqrt(observed / predicted), 1/2, 2)``."""
        pick = (lambda v: v) if rows is None else (lambda v: v.index_select(0, rows))
        actual = self.weighted(f_reuse - f_new, rows)  # (b, L) or (b,)
        base = u * self.weighted(pick(self.F_ref), rows)
        mult = None
        if self.mult is not None and u.dim() == 2:
            mult = pick(self.mult)
            base = base * mult
        dims = tuple(range(1, u.dim()))
        obs = (actual.sum(dims) if dims else actual) / ((base.sum(dims) if dims else base) + EPS)
        obs = obs.clamp(1e-3, 1e3)
        kappa = obs if calibrate else torch.sqrt(pick(self.kappa) * obs)
        self.kappa = kappa if rows is None else self.kappa.index_copy(0, rows, kappa)
        if mult is not None and not calibrate:
            pred = kappa[:, None] * base
            ratio = torch.where(pred > EPS, (actual / (pred + EPS)).sqrt().clamp(0.5, 2.0), torch.ones_like(pred))
            new = (mult * ratio).clamp(1.0 / 16.0, 16.0)
            self.mult = new if rows is None else self.mult.index_copy(0, rows, new)
        rel = (f_reuse - f_new).flatten(1).norm(dim=1) / (f_new.flatten(1).norm(dim=1) + EPS)
        self.drifts.append(float(rel.mean()))
