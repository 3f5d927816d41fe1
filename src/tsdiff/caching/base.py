"""Cache policies: the interface the DiffusionSampler talks to, and the no-op policy.

A policy sits between the solver and the network. For every network evaluation the sampler calls
``policy(denoiser, x, t, cond, step)``; the policy returns the denoiser's raw output, computed in full
or (for a real cache) partly reused from earlier steps. ``start`` resets all state before a sampling
run and ``finish`` frees it and returns the run's :class:`CacheStats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch


@dataclass
class CacheStats:
    """What a policy saved during one ``sample()`` call (summed over chunks)."""

    network_calls: int = 0  #: denoiser evaluations requested by the solver
    full_steps: int = 0  #: evaluations computed in full for the whole batch
    partial_steps: int = 0  #: evaluations that reused something
    tokens_total: int = 0  #: token slots that a full computation would have computed (layers x tokens x batch)
    tokens_recomputed: int = 0  #: token slots actually computed
    cache_bytes: int = 0  #: peak bytes held by the cache
    extra: dict[str, Any] = field(default_factory=dict)

    #: ``extra`` keys that describe the run's settings rather than count something (not summed by ``merge``)
    CONSTANT_EXTRA = frozenset({"K_effective", "path", "mode", "selection"})

    @property
    def fraction_recomputed(self) -> float:
        return self.tokens_recomputed / self.tokens_total if self.tokens_total else 1.0

    @property
    def hit_ratio(self) -> float:
        return 1.0 - self.fraction_recomputed

    @property
    def effective_network_calls(self) -> float:
        """Network evaluations weighted by the fraction of work actually done."""
        if not self.tokens_total:
            return float(self.network_calls)
        return self.network_calls * self.fraction_recomputed

    def merge(self, other: "CacheStats") -> "CacheStats":
        """Stats of two runs (e.g. two chunks) together. In ``extra``, integer counts are summed, other
        numbers are averaged weighted by network calls, and settings (``CONSTANT_EXTRA``, strings, ...)
        keep the latest value."""
        extra = dict(self.extra)
        w_self, w_other = self.network_calls, other.network_calls
        for key, value in other.extra.items():
            old = extra.get(key)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and key not in self.CONSTANT_EXTRA and isinstance(old, (int, float)) and not isinstance(old, bool):
                if isinstance(value, int) and isinstance(old, int):
                    extra[key] = old + value
                else:
                    total = w_self + w_other
                    extra[key] = (old * w_self + value * w_other) / total if total else value
            else:
                extra[key] = value
        return CacheStats(
            network_calls=self.network_calls + other.network_calls,
            full_steps=self.full_steps + other.full_steps,
            partial_steps=self.partial_steps + other.partial_steps,
            tokens_total=self.tokens_total + other.tokens_total,
            tokens_recomputed=self.tokens_recomputed + other.tokens_recomputed,
            cache_bytes=max(self.cache_bytes, other.cache_bytes),
            extra=extra,
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            fraction_recomputed=self.fraction_recomputed,
            hit_ratio=self.hit_ratio,
            effective_network_calls=self.effective_network_calls,
        )
        return d


DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class CachePolicy:
    """Base policy; subclasses override ``__call__`` (and ``start``/``finish`` to manage state)."""

    name = "base"

    def __init__(self) -> None:
        self._stats = CacheStats()
        #: set by the sampler before each chunk's ``start``: a seed derived from the sampler's seed and the
        #: chunk, for the policy's own random draws (None outside a sampler)
        self.run_seed: int | None = None
        #: the sampler's solver name, set by the sampler before ``start`` (None outside a sampler)
        self.solver: str | None = None

    def start(self, denoiser: Any, num_steps: int, batch_size: int) -> None:
        """Reset state before a sampling run of ``num_steps`` evaluations on ``batch_size`` samples."""
        self._stats = CacheStats()

    def __call__(self, denoise: DenoiseFn, x: torch.Tensor, t: torch.Tensor, cond: Any, step: int) -> torch.Tensor:
        raise NotImplementedError

    def finish(self) -> CacheStats:
        """Free cached tensors and return what this run saved."""
        stats = getattr(self, "_stats", CacheStats())
        self._stats = CacheStats()
        return stats


class NoCache(CachePolicy):
    """Compute everything: bit-identical to calling the denoiser directly."""

    name = "none"

    def __call__(self, denoise, x, t, cond, step):
        self._stats.network_calls += 1
        self._stats.full_steps += 1
        return denoise(x, t, cond)
