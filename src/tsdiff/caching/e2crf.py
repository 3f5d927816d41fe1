"""E2-CRF: Error-Feedback Event-Driven Cumulative Residual Feature caching for diffusion sampling.

Consecutive diffusion steps feed the score network almost the same input, so much of its work can be
reused. E2-CRF reuses it where the reuse is predicted to move the *sample* little, and re-measures that
prediction at regular full evaluations (error feedback). It comes as two policies and this ``auto`` one:

* :class:`~tsdiff.caching.token_path.TokenE2CRF` -- per token: cached keys/values and per-layer residuals,
  only selected tokens recomputed (``conf/cache/e2crf_token.yaml``);
* :class:`~tsdiff.caching.step_path.StepE2CRF` -- per sample: the whole network residual (or output) reused
  between steps (``conf/cache/e2crf_step.yaml``); the only path for backbones without token blocks;
* :class:`E2CRFCache` (``conf/cache/e2crf.yaml``) picks one of the two per sampling chunk.

The trigger (what a reuse costs) is :mod:`tsdiff.caching.pricing`; what a model must declare is
:mod:`tsdiff.caching.interface`. Design notes, ablation results and every measurement behind the
defaults, with the commands that produced them: ``docs/e2crf.md``.
"""

from __future__ import annotations

from typing import Any

from tsdiff.caching.base import CachePolicy, CacheStats
from tsdiff.caching.e2crf_base import E2CRFPolicy, model_cache_interface
from tsdiff.caching.step_path import StepE2CRF
from tsdiff.caching.token_path import TokenE2CRF

#: ``mode="auto"`` takes the token path from this many tokens (and ``AUTO_TOKEN_MIN_BATCH`` samples per
#: chunk), the step path otherwise: at the lengths measured so far (24-192) the step path is faster at equal
#: quality (docs/e2crf.md, "auto rule").
AUTO_TOKEN_MIN_LEN = 512
AUTO_TOKEN_MIN_BATCH = 16

MODES = ("auto", "token", "step")
_TOKEN_ONLY = ("K", "tau_warn", "random_probe_ratio", "full_fraction", "budget")


class E2CRFCache(CachePolicy):
    """E2-CRF with the path chosen per chunk (``mode="auto"``) or fixed (``"token"`` / ``"step"``).

    Takes the options of :class:`TokenE2CRF` and :class:`StepE2CRF` (token-only ones -- ``K``, ``tau_warn``,
    ``random_probe_ratio``, ``full_fraction``, ``budget`` -- are ignored on the step path). ``auto`` takes the
    token path for transformers with at least ``AUTO_TOKEN_MIN_LEN`` tokens and ``AUTO_TOKEN_MIN_BATCH``
    samples, the step path otherwise; ``selection="random"`` needs the token path, ``selection="fixed"``
    (naive reuse) runs on the step path unless ``mode="token"``.
    """

    name = "e2crf"

    def __init__(self, K: int = 5, tau_0: float | str = "auto", R: int = 10, tau_warn: float = 0.5, random_probe_ratio: float = 0.05,
                 *, mode: str = "auto", selection: str = "event", **options: Any):
        if mode not in MODES:
            raise ValueError(f"cache_kwargs.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if selection not in TokenE2CRF.SELECTIONS:
            raise ValueError(f"cache_kwargs.selection must be one of {', '.join(TokenE2CRF.SELECTIONS)}, got {selection!r}")
        if selection == "random" and mode == "step":
            raise ValueError("selection='random' picks tokens and needs the token path; use mode='token' or 'auto'")
        self.mode, self.selection = mode, selection
        token_kw = dict(K=K, tau_0=tau_0, R=R, tau_warn=tau_warn, random_probe_ratio=random_probe_ratio, selection=selection, **options)
        # both are built (and so validated) now; the one that runs is picked in start()
        self.token = TokenE2CRF(**token_kw) if mode != "step" or selection == "random" else None
        step_kw = {k: v for k, v in token_kw.items() if k not in _TOKEN_ONLY}
        self.step = StepE2CRF(**step_kw) if selection != "random" else None
        for policy in (self.token, self.step):
            if policy is not None:
                policy.mode = mode
        self.tau_0, self.R = tau_0, int(R)  # the setting ("auto" is resolved per model by the running policy)
        self.active: E2CRFPolicy | None = None
        self.run_seed: int | None = None
        self.solver: str | None = None

    def choose(self, spec: Any, batch_size: int) -> E2CRFPolicy:
        """The policy that runs on ``spec``'s model for chunks of ``batch_size`` samples."""
        iface = model_cache_interface(spec)
        tokens = iface is not None and iface.tokens is not None
        if self.selection == "random" or self.mode == "token":
            return self.token  # without token blocks its start() raises a clear error
        if self.mode == "step" or self.selection == "fixed" or not tokens:
            return self.step
        n_tokens = int(getattr(iface.tokens, "num_tokens", iface.length))  # patches: tokens, not positions
        long_enough = n_tokens >= AUTO_TOKEN_MIN_LEN and batch_size >= AUTO_TOKEN_MIN_BATCH
        return self.token if long_enough else self.step

    def start(self, denoiser: Any, num_steps: int, batch_size: int) -> None:
        self.active = self.choose(denoiser, batch_size)
        self.active.run_seed, self.active.solver = getattr(self, "run_seed", None), getattr(self, "solver", None)
        self.active.start(denoiser, num_steps, batch_size)

    def __call__(self, denoise, x, t, cond, step):
        if self.active is None:
            raise RuntimeError("E2CRFCache was called before start(); the DiffusionSampler calls start() for you")
        return self.active(denoise, x, t, cond, step)

    def finish(self) -> CacheStats:
        stats = self.active.finish() if self.active is not None else CacheStats()
        self.active = None
        return stats

    @property
    def holds_state(self) -> bool:
        """Whether any cached tensor is alive (False after ``finish``)."""
        return any(p is not None and p.holds_state for p in (self.token, self.step))
