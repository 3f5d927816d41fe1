"""What the two E2-CRF policies share: options, the refresh schedule, the lifecycle and the bookkeeping.

The token path (:mod:`tsdiff.caching.token_path`) and the step path (:mod:`tsdiff.caching.step_path`)
both recompute everything every ``R``-th evaluation (a *refresh*, where error feedback measures the real
drift) and at the second evaluation (which calibrates the drift ratio ``kappa``); between refreshes
they reuse what the trigger (:mod:`tsdiff.caching.pricing`) prices below ``tau_0``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tsdiff.caching.base import CachePolicy, CacheStats
from tsdiff.caching.interface import CacheInterface
from tsdiff.caching.pricing import ReusePricer, check_flag, check_number, resolve_tau_0, warn_time_domain_once


def model_cache_interface(spec: Any) -> CacheInterface | None:
    """The cache interface the sampled model declares, if any. ``spec`` is the sampler's
    :class:`~tsdiff.sampling.denoiser.DiffusionModelSpec` (what ``CachePolicy.start`` receives)."""
    return spec.cache_interface() if spec.cache_interface is not None else None


class E2CRFPolicy(CachePolicy):
    """Base of the E2-CRF policies (see the subclasses for the paths).

    Args:
        tau_0: threshold on the predicted deviation a reuse pushes into the sample, in units of its rms
            (>= 0; 0 recomputes everything; larger = more reuse). ``"auto"`` (default): 0.02 for
            frequency-domain models (0.01 under a deterministic solver), 0.01 for time-domain ones
            (:func:`~tsdiff.caching.pricing.resolve_tau_0`).
        R: a full refresh (with error-feedback measurement) every ``R`` evaluations (integer >= 1).
        event_trigger, error_feedback, energy_weighting: switch the three mechanisms off (ablations).
        batch_sync: decide for the whole chunk instead of per sample (faster on small networks; makes a
            sample's schedule depend on its neighbours, never its data).
        seed: seed of the policy's own random draws (probes, random selection), mixed with the sampler's
            run seed (:attr:`CachePolicy.run_seed`, one per chunk) so that chunks draw different probes.
        forecast: what a reused residual is on a partial step: ``"hold"`` (zero-order hold, the last
            computed value) or ``"linear"`` (first-order finite-difference extrapolation in diffusion time
            from a token's last two computed values, TaylorSeer order 1; held until two exist).
    """

    FORECASTS = ("hold", "linear")

    name = "e2crf"
    #: the ``selection`` strategies a subclass implements
    SELECTIONS: tuple[str, ...] = ("event",)

    def __init__(self, tau_0: float | str = "auto", R: int = 10, *, event_trigger: bool = True, error_feedback: bool = True,
                 energy_weighting: bool = True, selection: str = "event", batch_sync: bool = False, seed: int = 0,
                 forecast: str = "hold"):
        if forecast not in self.FORECASTS:
            raise ValueError(f"cache.forecast (alias cache_kwargs.forecast) must be one of {', '.join(self.FORECASTS)}, got {forecast!r}")
        self.forecast = forecast
        self.tau_0_setting = tau_0
        self.tau_0 = resolve_tau_0(tau_0, None)  # "auto" is resolved again in start(), once the model is known
        check_number("R", R, 1, None, integer=True)
        check_number("seed", seed, 0, None, integer=True)
        if selection not in self.SELECTIONS:
            raise ValueError(f"cache_kwargs.selection must be one of {', '.join(self.SELECTIONS)} for {type(self).__name__}, got {selection!r}")
        for name, flag in (("batch_sync", batch_sync), ("event_trigger", event_trigger), ("error_feedback", error_feedback),
                           ("energy_weighting", energy_weighting)):
            check_flag(name, flag)
        self.R, self.seed = int(R), int(seed)
        self.event_trigger, self.error_feedback, self.energy_weighting = event_trigger, error_feedback, energy_weighting
        self.selection, self.batch_sync = selection, batch_sync
        self.mode = "auto"  # what the user asked for (reported); E2CRFCache sets it
        self._stats = CacheStats()
        self.run_seed: int | None = None
        self.solver: str | None = None
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle
    def _reset_state(self) -> None:
        self._iface: CacheInterface | None = None
        self._spec: Any = None
        self._path: str | None = None
        self.pricer: ReusePricer | None = None
        self._acc: torch.Tensor | None = None  # predicted deviation accumulated since the last recompute
        self._gen: torch.Generator | None = None
        self._step = 0

    def start(self, denoiser: Any, num_steps: int, batch_size: int) -> None:
        """Reset all state for a new chunk and read what the model declares for caches."""
        self._reset_state()
        self._stats = CacheStats()
        self._spec = denoiser
        self._iface = model_cache_interface(denoiser)
        self._path = self._choose_path(self._iface)
        iface = self._iface
        self.tau_0 = resolve_tau_0(self.tau_0_setting, iface.frequency_domain if iface is not None else None, self.solver)
        self.pricer = ReusePricer(
            schedule=denoiser.schedule, parameterization=denoiser.parameterization,
            output_sensitivity=iface.output_sensitivity if iface is not None else None,
            data_std=iface.data_std if iface is not None else None,
            per_sample=self._path in ("output", "network-output"), energy_weighting=self.energy_weighting,
            patch=getattr(iface.tokens, "patch_size", 1) if iface is not None and iface.tokens is not None else 1,
        )
        self._stats.extra.update(path=self._path, mode=self.mode, selection=self.selection, tau_0=self.tau_0,
                                 forecast=self.forecast)
        if iface is not None and self.selection == "event":
            warn_time_domain_once(iface.frequency_domain, self.tau_0)

    def _choose_path(self, iface: CacheInterface | None) -> str:
        raise NotImplementedError

    def finish(self) -> CacheStats:
        """Free every cached tensor and return the statistics of the run."""
        stats = self._stats
        self._finish_extra(stats)
        if self.pricer is not None and self.pricer.drifts:
            stats.extra["mean_refresh_drift"] = float(sum(self.pricer.drifts) / len(self.pricer.drifts))
        if self.pricer is not None and self.pricer.kappa is not None:
            stats.extra["mean_kappa"] = float(self.pricer.kappa.mean())
        self._stats = CacheStats()
        self._reset_state()
        return stats

    def _finish_extra(self, stats: CacheStats) -> None:
        """Path-specific facts added to the stats at the end of a run."""

    def _cached_tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def holds_state(self) -> bool:
        """Whether any cached tensor is alive (False after ``finish``)."""
        return bool(self._cached_tensors()) or self._acc is not None or (self.pricer is not None and bool(self.pricer.tensors()))

    # ------------------------------------------------------------------ entry point
    def exact_everything(self) -> bool:
        """Settings under which every evaluation is recomputed in full (reproduces uncached sampling)."""
        return self.R == 1 or (self.tau_0 == 0.0 and self.selection == "event" and self.event_trigger)

    def __call__(self, denoise: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any, step: int) -> torch.Tensor:
        if self._path is None:
            raise RuntimeError(f"{type(self).__name__} was called before start(); the DiffusionSampler calls start() for you")
        self._step = int(step)
        if self.exact_everything():
            if self._iface is None:
                length = x.shape[1] if x.dim() > 1 else 1
                self._count(full=True, layers=1, length=length, batch=x.shape[0], computed=length * x.shape[0])
                return denoise(x, t, cond)
            return self._iface.denoise_with(x, t, cond, self._network_exact)
        self.pricer.set_prices(x, t)
        if self._iface is None:
            return self._evaluate_output(denoise, x, t, cond)
        # the model keeps its representation and preconditioning and calls the cache as its network
        return self._iface.denoise_with(x, t, cond, self._network)

    def _network_exact(self, y: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        layers = len(self._iface.tokens.layers) if self._iface.tokens is not None and self._path in ("token", "step") else 1
        self._count(full=True, layers=layers, length=y.shape[1], batch=y.shape[0], computed=y.shape[1] * y.shape[0])
        return self._iface.network(y, tt)

    def _network(self, y: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        """Stands in for the network ``F(y, tt)`` inside the model's ``denoise`` during a cached run."""
        raise NotImplementedError

    def _evaluate_output(self, denoise: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        raise ValueError(f"{type(self).__name__} needs a model that declares a cache interface")

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            seed = self.seed if self.run_seed is None else (self.seed * 0x9E3779B1 + int(self.run_seed)) % (2**63)
            self._gen = torch.Generator(device=device).manual_seed(seed)
        return self._gen

    @staticmethod
    def forecast_ratio(t: torch.Tensor, t_ref: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """How far a linear forecast from values at ``t_prev`` and ``t_ref`` reaches at ``t``, in units of
        their interval: ``(t - t_ref) / (t_ref - t_prev)``, clipped to [0, 2] (a forecast further than two
        of its own intervals is not trusted); 0 where there is no previous value (``t_prev`` NaN)."""
        ratio = (t - t_ref) / (t_ref - t_prev)
        return torch.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 2.0)

    @classmethod
    def extrapolate(cls, d: torch.Tensor, d_prev: torch.Tensor | None, t: torch.Tensor, t_ref: torch.Tensor,
                    t_prev: torch.Tensor) -> torch.Tensor:
        """First-order (TaylorSeer-style finite-difference) forecast of a residual ``d`` computed at times
        ``t_ref`` from the one before it (``d_prev`` at ``t_prev``) to time ``t``: ``d + (d - d_prev) r``
        with ``r`` from :meth:`forecast_ratio`; times broadcast against ``d``'s leading dims."""
        if d_prev is None:
            return d
        ratio = cls.forecast_ratio(t, t_ref, t_prev)
        while ratio.dim() < d.dim():
            ratio = ratio.unsqueeze(-1)
        return d + (d - d_prev) * ratio.to(d.dtype)

    def _is_refresh(self, step: int) -> bool:
        """Full evaluations: every ``R``-th, plus the second one, which calibrates the sensitivity."""
        return step % self.R == 0 or step == 1

    def _adapt(self, step: int) -> bool:
        """Whether measurements at this evaluation may change the sensitivities: always at the
        calibration step, afterwards only with error feedback."""
        return self.selection == "event" and (step == 1 or self.error_feedback)

    def _count(self, *, full: bool, layers: int, length: int, batch: int, computed: int) -> None:
        s = self._stats
        s.network_calls += 1
        if full:
            s.full_steps += 1
        else:
            s.partial_steps += 1
        s.tokens_total += layers * length * batch
        s.tokens_recomputed += layers * computed

    def _bytes(self) -> None:
        tensors = self._cached_tensors()
        tensors += [t for t in (self.pricer.mult, self.pricer.F_ref, self._acc) if t is not None]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._stats.cache_bytes = max(self._stats.cache_bytes, nbytes)
