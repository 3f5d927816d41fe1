"""E2-CRF: Error-Feedback Event-Driven Cumulative Residual Feature caching for diffusion sampling.

Consecutive diffusion steps feed the score network almost the same input, so much of its work can be
reused. This module reuses it at two granularities; both plug into the
:class:`~tsdiff.sampling.DiffusionSampler` as a :class:`~tsdiff.caching.base.CachePolicy`::

    sampler = DiffusionSampler(score_model=model, sample_batch_size=64, use_cache=True,
                               cache_kwargs={"K": 5, "tau_0": 0.1, "R": 10, "tau_warn": 0.5,
                                             "random_probe_ratio": 0.05})
    samples = sampler.sample(num_samples=64, num_diffusion_steps=100, seed=0)
    sampler.last_stats.cache      # full steps, fraction recomputed, hit ratio, effective NFE, bytes

What is cached (``mode="token"``, transformer score networks)
    Per layer ``l`` and token ``i``: the keys/values ``K_l[i], V_l[i]`` computed from the layer *input*
    at the token's last recompute, and the token's cumulative residual ``D_l[i] = layer_l(h)[i] - h[i]``
    (attention branch + feed-forward branch, i.e. the layer's whole contribution to the residual stream).

What is recomputed on a partial step
    The input embedding ``h_0`` (value + position + *current* time encoding) is computed for every token
    (it is cheap). In every layer the selected tokens are gathered, and only for them are the queries,
    keys, values, attention against *all* keys (fresh ones for selected tokens, cached ones for the
    rest), output projection and feed-forward computed; their results are scattered back into the
    caches. Every token then advances the residual stream by ``h <- h + D_l`` (fresh ``D_l`` for selected
    tokens, cached for the others) and the read-out runs on all tokens. Work in the layers therefore
    scales with the number of recomputed tokens.

The approximation
    An unselected token's residual stream carries its *fresh* input (new noisy value, new time
    encoding) through the skip connections, but each layer adds the residual ``D_l[i]`` it produced at
    the token's last recompute, and other tokens attend to its stale ``K_l[i], V_l[i]``. Nothing else
    is approximated: selected tokens are exact given the (partly stale) keys they attend to.

How it plugs in
    ``start`` installs the cache as the model's ``network_hook``: the model's ``denoise`` keeps its
    representation (frequency transform) and preconditioning (``c_skip x + c_out F``) and calls the cache
    instead of ``F = score_network(y, t)``; ``finish`` removes the hook (also when sampling fails). What is
    cached and approximated is therefore only the network output ``F``; the skip term stays exact.

Event intensity: the predicted harm of a reuse, per sample, on the device
    What a reused token costs is not how much its features changed but how much the stale output moves
    the *sample*. Three factors, each cheap to evaluate before the network runs:

    * the predicted change of the token's network output ``|dF_i| ~ kappa_b * m_i * u_i * |F_i|``, from
      the relative change of its layer-0 input since its last recompute, ``u_i = |h_0[i] - h_0^ref[i]| /
      |h_0^ref[i]|`` (value + position + time embedding). ``kappa_b`` (per sample) and ``m_i`` (per
      token) are the sensitivities measured by error feedback (below);
    * the output sensitivity ``omega_i(t)`` of the model (``ScoreModule.output_sensitivity``): how far an
      error in ``F`` at this noise level moves the final sample, in units of the component's data std
      (``s d / (s^2 + d^2)`` for the preconditioned x0 network: ~0 at very high noise, where the sample
      still forgets, and at very low noise, where ``c_out -> 0``). Plain denoisers without it get the
      same formula with ``d = 1``;
    * the step size ``phi = 1 - exp(-|d lambda|)`` (``lambda = log(alpha / sigma)``, the change since the
      previous evaluation): the weight of the data prediction in a first-order step (DPM-Solver++ /
      DDIM), so the price does not depend on how many steps the grid has.

    ``g_i = phi * kappa_b * m_i * u_i * rms_c(omega_ic * F_ic)`` is what reusing token ``i`` once more
    adds to the sample's deviation, in units of the token's own data std. Divided by the token's energy
    weight ``w_i`` (below) it is in units of the whole sample's rms -- the scale of relative L2 and of the
    Wasserstein metrics. The **event intensity** of a token is ``I_i = (A_i + g_i) / w_i``, where ``A_i``
    sums the ``g_i`` of the token's reuses since its last recompute; ``tau_0 = 0.1`` therefore reads
    "a token may push the sample by 10 % of its rms before it is recomputed". Why not the raw residual
    change: under SDE sampling every token's input moves ~45 % per step and its residual ~15 % at every
    noise level, so a threshold on it recomputes almost everything (86 % at ``tau_0 = 0.1`` on the
    main-job model: a 0.94x "speed-up"), although reusing in the first and last third of the steps is
    nearly free (measured: see ``ScoreModule.output_sensitivity``).

Which tokens are recomputed
    * the ``K`` lowest-frequency tokens (order of :func:`tsdiff.diffusion.fourier.frequency_index`:
      DC, then real/imaginary parts of frequency 1, 2, ...) -- always. In the *time* domain tokens have
      no frequency order, so ``K`` is ignored there (no forced tokens; ``stats.extra["K_effective"]``
      says 0);
    * *events*: tokens with ``I_i > tau_0``, i.e. ``A_i + g_i > tau_0 * w_i``: an **energy-weighted
      threshold** with ``w_i = clip(sqrt(mean_j E_j / E_i), 1/16, 16)`` and ``E_i`` the token's spectral
      energy in the data (mean square of the model's per-component data std; the current network input's
      when the model has none). Energetic components, which dominate the sample, get a lower threshold;
      near-silent high frequencies a higher one. Measured on the main-job model (step path, 64 samples,
      100 steps): at the same ~12 % of the work, relative L2 to uncached 0.142 with and 0.167 without;
    * random probes: ``round(random_probe_ratio * L)`` positions drawn per step from the policy's own
      seeded generator, shared by the whole batch, so that cached tokens are re-measured now and then;
    * a sample whose rms intensity ``rms_i I_i`` exceeds ``tau_warn`` (or that selects more than
      ``full_fraction`` of its tokens, where gathering cannot pay) is recomputed in full.

Error feedback (every ``R`` steps)
    Every ``R``-th evaluation recomputes everything (a refresh). Before overwriting the caches it
    evaluates what reuse *would* have returned (one extra read-out of ``h_0 + sum_l D_l^cached``) and
    compares the real output drift with the predicted one: ``kappa_b`` moves to the observed ratio
    (geometric mean of old and new), and each token's ``m_i`` by ``clip(sqrt(observed / predicted),
    1/2, 2)`` (kept in [1/16, 16]) -- tokens whose drift was underestimated are recomputed sooner, the
    others are cached longer. The second evaluation is always a full one and calibrates ``kappa``. With
    ``error_feedback=False`` both stay at their calibrated values.

Step-level path (``mode="step"``)
    At batch 1 on small models the gathers, scatters and Python overhead of the token path cost about
    as much as the work they save. The step-level path caches the whole network's residual
    ``D = h_L - h_0`` per sample and, on a reused step, returns ``readout(h_0 + D)`` with the fresh
    input embedding: one embedding and one read-out instead of all layers. A sample's intensity is
    ``A_b + G_b`` with ``G_b = rms_i(g_i / w_i)`` (its tokens' predicted deviations in units of its rms)
    and ``A_b`` the sum of ``G_b`` over its reuses since its last recompute; it is recomputed when that
    passes ``tau_0``, and at every ``R``-th evaluation, where the real drift is measured and ``kappa_b``
    updated (error feedback). ``tau_warn``, ``K`` and the probes have no role on this path.
    ``mode="auto"`` (default) takes the token path when the sequence has at least
    ``AUTO_TOKEN_MIN_LEN`` tokens and the batch at least ``AUTO_TOKEN_MIN_BATCH`` samples, the step path
    otherwise (see the benchmark in ``cmd/benchmark_cache.py`` for the measurements behind this rule).

Other score networks (LSTM, plain callables)
    Have no token structure to gather: they get the step-level path on the network *output* ``F``
    (a reused step returns the sample's last computed ``F``; the model's skip term stays fresh), priced
    like the step path with the relative change of the whole network input as ``u`` (plain callables
    without a hook: reuse of the whole denoiser output). ``mode="token"`` on them raises a clear error;
    ``stats.extra["path"]`` always says which path ran.

Limits (measured)
    The output sensitivity assumes coordinates in which the data are roughly uncorrelated, as the
    whitened frequency coordinates are. In the *time* domain neighbouring values are strongly correlated,
    so the smooth directions carry far more variance than the per-position data std (~1) says, and errors
    along them survive much longer than ``omega`` predicts: on a time-domain stocks model (30 epochs,
    64 samples, 100 steps) reusing 9 of 10 steps in one block of steps 20-50 moved samples by 0.41-0.47
    (relative L2) against 0.10-0.15 for the frequency-domain model, and the default ``tau_0 = 0.1`` gave
    relative L2 0.76 (SWD 0.84 vs 0.77 uncached) at 2.9x, ``tau_0 = 0.01`` 0.24 (SWD 0.77) at 2.5x. The
    cache logs this advice once for time-domain models. The principled fix -- pricing the error in the
    data's spectral basis, which needs the spectral data std stored with the model -- is not built yet.

Direction of the knobs
    ``tau_0`` is a threshold on the event intensity, so a *larger* ``tau_0`` means more reuse (faster,
    further from uncached sampling) and ``tau_0 = 0`` recomputes everything; likewise a larger ``K`` and
    a smaller ``R`` mean more computation. The reference README's tuning notes state the opposite for
    ``tau_0`` and ``K`` in places (and contradict themselves on ``K``); tsdiff follows the definition of
    the mechanism (tokens whose intensity *exceeds* the threshold are recomputed).

Correctness properties (tested)
    * ``R=1`` (or ``tau_0=0``) recomputes everything each step and reproduces uncached sampling.
    * Every decision for a sample depends only on that sample (and on the shared, seeded probe draws):
      a sample's result is the same alone or inside a batch. Batches are padded to a common number of
      gathered tokens, but padded slots are computed and then *discarded* (their cache entries keep
      their old values), so padding never changes a neighbour's result.
    * ``start`` resets all state and ``finish`` frees it.

Host synchronisation: one small device-to-host copy per evaluation (how many samples are recomputed
in full and the largest gather size), needed to size the gathered tensors; selection itself
(thresholds, top-k, masks) stays on the device.

Ablation variants (options): ``event_trigger=False`` (only forced tokens and probes), ``error_feedback=False``
(sensitivities stay at their calibration), ``energy_weighting=False`` (``w_i = 1``: deviations in units of
each component's own data std),
``selection="random"`` (recompute a random ``budget`` fraction of tokens per step, token path),
``selection="fixed"`` (naive caching: reuse everything between refreshes every ``R`` steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from tsdiff.caching.base import CachePolicy, CacheStats

log = logging.getLogger(__name__)

#: a time-domain model gets this advice once per process (see "Limits" in the module docstring)
_TIME_DOMAIN_WARNED = False

#: ``mode="auto"`` uses the token path from this many tokens (and ``AUTO_TOKEN_MIN_BATCH`` samples per
#: chunk), the step path otherwise. Measured on 2 CPU cores, default 4-layer d_model-64 transformer, 100
#: Euler-Maruyama steps, batch 64, one thread: main-job model (L=24) step path 4.3x at 12 % of the work; a
#: stocks model with L=96 (8 epochs): step path 7.3x (relative L2 to uncached 0.11) and 6.3x (0.078 at
#: tau_0=0.03) against the token path's 2.3x-2.8x (0.059). The token path is more accurate per unit of work
#: (it recomputes only the tokens that matter) but pays K forced tokens, probes, gathers and scatters on
#: every partial step, while a reused step costs one embedding and one read-out. Its per-forward gain
#: grows with length (10 % of tokens, batch 64: 2.4x at L=24, 3.4x at L=96, 5.4x at L=192), so auto keeps it
#: for long sequences, where it is untested against the step path: from 512 tokens.
AUTO_TOKEN_MIN_LEN = 512
AUTO_TOKEN_MIN_BATCH = 16

_MODES = ("auto", "token", "step")
_SELECTIONS = ("event", "random", "fixed")
_EPS = 1e-8


@dataclass
class _LayerCache:
    k: torch.Tensor  # (B, H, L, d_head) keys from the layer input at each token's last recompute
    v: torch.Tensor  # (B, H, L, d_head)
    d: torch.Tensor  # (B, L, d_model) the layer's residual contribution  layer(h) - h


def _check_number(name: str, value: Any, lo: float, hi: float | None, *, integer: bool = False, lo_open: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"cache_kwargs.{name} must be {kind}, got {value!r}")
    below = value <= lo if lo_open else value < lo
    if below or (hi is not None and value > hi):
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        rng = f"{lo_s}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"cache_kwargs.{name}={value!r} is out of range: it must be {rng}")


def _length(x: torch.Tensor) -> int:
    return x.shape[1] if x.dim() > 1 else 1


def _is_transformer(net: Any) -> bool:
    return (
        hasattr(net, "embed_tokens")
        and hasattr(net, "readout")
        and hasattr(net, "layers")
        and all(hasattr(layer, "project_qkv") and hasattr(layer, "attend") and hasattr(layer, "feedforward_branch") for layer in net.layers)
    )


class E2CRFCache(CachePolicy):
    """Error-feedback event-driven cumulative-residual-feature cache (see the module docstring).

    Args:
        K: low-frequency tokens always recomputed (integer >= 0; frequency domain only).
        tau_0: base threshold on a token's event intensity, the predicted deviation its reuse pushes
            into the sample in units of the data std (>= 0; 0 recomputes everything; larger = more reuse).
        R: a full refresh (with error-feedback measurement) every ``R`` evaluations (integer >= 1; 1
            recomputes everything).
        tau_warn: a sample whose energy-weighted mean event intensity exceeds this is recomputed in full
            (> 0; token path).
        random_probe_ratio: fraction of tokens probed at random each step (in [0, 1]; token path).
        mode: ``"auto"``, ``"token"`` or ``"step"`` (see module docstring).
        event_trigger, error_feedback, energy_weighting: switch the three mechanisms off for ablations.
        selection: ``"event"`` (E2-CRF), ``"random"`` (a random ``budget`` fraction of tokens per step,
            token path) or ``"fixed"`` (naive reuse of everything between refreshes every ``R`` steps).
        budget: fraction of tokens recomputed per step by ``selection="random"`` (in (0, 1]).
        full_fraction: a sample selecting more than this fraction of its tokens is computed in full
            (in (0, 1]); gathering most tokens costs more than computing them all.
        batch_sync: take recompute decisions for the whole chunk (mean intensity against the threshold;
            any sample's full recompute makes the step full) instead of per sample. Small networks cost
            about the same for 3 rows as for 64, so per-sample decisions that fire at different steps
            fragment the work; synchronised decisions avoid that but make a sample's result depend on its
            batch neighbours (no data is mixed, only the schedule). Off by default.
        seed: seed of the random probes / random selection.
    """

    name = "e2crf"

    def __init__(
        self,
        K: int = 5,
        tau_0: float = 0.1,
        R: int = 10,
        tau_warn: float = 0.5,
        random_probe_ratio: float = 0.05,
        *,
        mode: str = "auto",
        event_trigger: bool = True,
        error_feedback: bool = True,
        energy_weighting: bool = True,
        selection: str = "event",
        budget: float | None = None,
        full_fraction: float = 0.5,
        batch_sync: bool = False,
        seed: int = 0,
    ):
        _check_number("K", K, 0, None, integer=True)
        _check_number("tau_0", tau_0, 0.0, None)
        _check_number("R", R, 1, None, integer=True)
        _check_number("tau_warn", tau_warn, 0.0, None, lo_open=True)
        _check_number("random_probe_ratio", random_probe_ratio, 0.0, 1.0)
        _check_number("full_fraction", full_fraction, 0.0, 1.0, lo_open=True)
        _check_number("seed", seed, 0, None, integer=True)
        if mode not in _MODES:
            raise ValueError(f"cache_kwargs.mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if selection not in _SELECTIONS:
            raise ValueError(f"cache_kwargs.selection must be one of {', '.join(_SELECTIONS)}, got {selection!r}")
        if selection == "random":
            if budget is None:
                raise ValueError("cache_kwargs.selection='random' needs cache_kwargs.budget (fraction of tokens per step, in (0, 1])")
            _check_number("budget", budget, 0.0, 1.0, lo_open=True)
            if mode == "step":
                raise ValueError("selection='random' picks tokens and needs the token path; use mode='token' or 'auto'")
        elif budget is not None:
            raise ValueError("cache_kwargs.budget is only used with selection='random'; drop it or set selection='random'")
        for name, flag in (("batch_sync", batch_sync), ("event_trigger", event_trigger), ("error_feedback", error_feedback), ("energy_weighting", energy_weighting)):
            if not isinstance(flag, bool):
                raise ValueError(f"cache_kwargs.{name} must be true or false, got {flag!r}")
        self.K, self.tau_0, self.R, self.tau_warn = int(K), float(tau_0), int(R), float(tau_warn)
        self.random_probe_ratio = float(random_probe_ratio)
        self.mode, self.selection, self.budget = mode, selection, budget
        self.event_trigger, self.error_feedback, self.energy_weighting = event_trigger, error_feedback, energy_weighting
        self.full_fraction = float(full_fraction)
        self.batch_sync = batch_sync
        self.seed = int(seed)
        self._stats = CacheStats()
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle
    def _reset_state(self) -> None:
        self._net = None
        self._module = None
        self._spec = None
        self._path = None
        self._layers: list[_LayerCache] | None = None
        self._h0_ref: torch.Tensor | None = None  # (B, L, d) layer-0 input at each token's last recompute
        self._mult: torch.Tensor | None = None  # (B, L) per-token drift corrections (error feedback)
        self._D: torch.Tensor | None = None  # step path: (B, L, d) whole-network residual
        self._out_ref: torch.Tensor | None = None  # output path: last computed output
        self._x_ref: torch.Tensor | None = None  # output path: its input
        self._F_ref: torch.Tensor | None = None  # (B, L, C) last network output (what a reuse is priced on)
        self._acc: torch.Tensor | None = None  # predicted deviation accumulated since the last recompute
        self._kappa: torch.Tensor | None = None  # (B,) output drift per unit input change
        self._sens: torch.Tensor | None = None  # output sensitivity omega at the current evaluation
        self._phi: torch.Tensor | None = None  # (B,) step weight 1 - exp(-|d lambda|)
        self._lam_prev: torch.Tensor | None = None
        self._forced: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None  # (1, L) energy weights from the data std
        self._gen: torch.Generator | None = None
        self._drifts: list[float] = []
        self._selected: torch.Tensor | None = None
        self._hooked = False
        self._step = 0

    def start(self, denoiser: Any, num_steps: int, batch_size: int) -> None:
        """Reset all state for a new chunk, pick the path, and install the network hook."""
        self._reset_state()
        self._stats = CacheStats()
        self._spec = denoiser
        module = getattr(denoiser, "module", None)
        self._module = module
        hookable = module is not None and hasattr(module, "network_hook") and hasattr(module, "score_network")
        net = module.score_network if hookable else None
        if hookable and _is_transformer(net):
            self._net = net
            length = int(module.sample_shape[0])
            if self.selection == "random" or self.mode == "token":
                path = "token"
            elif self.mode == "step" or self.selection == "fixed":
                path = "step"
            else:
                path = "token" if (length >= AUTO_TOKEN_MIN_LEN and batch_size >= AUTO_TOKEN_MIN_BATCH) else "step"
        else:
            if self.mode == "token" or self.selection == "random":
                kind = type(net).__name__ if net is not None else "a plain denoiser"
                raise ValueError(
                    f"the token-level E2-CRF path needs a transformer score network, got {kind}; "
                    "use cache_kwargs.mode='step' (or 'auto'), which reuses whole network outputs between steps"
                )
            self._net = net
            path = "network-output" if hookable else "output"
        if hookable:
            if module.network_hook is not None:
                raise RuntimeError(
                    "the model already has a network_hook installed (another cache policy is running on it); "
                    "finish that sampling run first"
                )
            module.network_hook = self._hook
            self._hooked = True
        self._path = path
        self._stats.extra.update(path=path, mode=self.mode, selection=self.selection)
        self._warn_time_domain(module)

    def _warn_time_domain(self, module: Any) -> None:
        global _TIME_DOMAIN_WARNED
        if _TIME_DOMAIN_WARNED or self.selection != "event" or not hasattr(module, "output_sensitivity"):
            return
        if getattr(module, "fourier_transform", True) is False and self.tau_0 > 0.02:
            _TIME_DOMAIN_WARNED = True
            log.warning(
                "E2-CRF on a time-domain model (fourier_transform=false): its reuse-error model assumes "
                "decorrelated (frequency) coordinates and underestimates the error here; measured at tau_0=0.1: "
                "relative L2 0.76 to uncached samples, at tau_0=0.01: 0.24 (2.5x faster). Consider "
                "cache_kwargs.tau_0=0.01."
            )

    def finish(self) -> CacheStats:
        """Remove the network hook, free every cached tensor and return the statistics of the run."""
        stats = self._stats
        if self._selected is not None:
            # token slots of partially computed samples that were truly selected (the rest is padding)
            stats.extra["tokens_selected_partial"] = int(self._selected)
        if self._drifts:
            stats.extra["mean_refresh_drift"] = float(sum(self._drifts) / len(self._drifts))
        if self._kappa is not None:
            stats.extra["mean_kappa"] = float(self._kappa.mean())
        if self._hooked and self._module is not None and self._module.network_hook == self._hook:
            self._module.network_hook = None
        self._stats = CacheStats()
        self._reset_state()
        return stats

    @property
    def holds_state(self) -> bool:
        """Whether any cached tensor is alive (False after ``finish``)."""
        return any(
            t is not None
            for t in (self._layers, self._h0_ref, self._D, self._out_ref, self._mult, self._kappa, self._F_ref, self._acc, self._sens)
        )

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

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
        tensors: list[torch.Tensor] = []
        for lc in self._layers or []:
            tensors += [lc.k, lc.v, lc.d]
        tensors += [t for t in (self._h0_ref, self._mult, self._D, self._out_ref, self._x_ref, self._F_ref, self._acc) if t is not None]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._stats.cache_bytes = max(self._stats.cache_bytes, nbytes)

    @staticmethod
    def _intensity(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-token relative input change ``|h - ref| / |ref|`` over the last dim -> (B, L)."""
        return (h - ref).norm(dim=-1) / (ref.norm(dim=-1) + _EPS)

    def _energy_weights(self, y: torch.Tensor) -> torch.Tensor:
        """Energy weights ``w_i = clip(sqrt(mean_j E_j / E_i), 1/16, 16)``, shape ``(1 or B, L)``.

        ``E_i`` is the token's spectral energy in the data: the mean square of the model's per-component
        data std (``data_std``, fitted on the training split) when it has one, else the mean square of
        the current network input. ``w_i`` converts a deviation in units of the token's own data std into
        units of the sample's rms (the scale of relative L2 and of the Wasserstein metrics): an energetic
        token gets a lower threshold ``tau_0 * w_i``, a near-silent one a higher threshold. All ones without
        ``energy_weighting``."""
        length = y.shape[1]
        if not self.energy_weighting:
            return torch.ones(1, length, device=y.device)
        if self._weights is None or self._weights.shape[-1] != length:
            std = getattr(self._module, "data_std", None)
            energy = std.pow(2).mean(-1)[None].to(y.device, torch.float32) if std is not None and std.shape[0] == length else y.pow(2).mean(-1)
            w = (energy.mean(1, keepdim=True) / (energy + _EPS)).sqrt().clamp(1.0 / 16.0, 16.0)
            if std is None or std.shape[0] != length:
                return w  # follows the current input: not cached
            self._weights = w
        return self._weights

    @staticmethod
    def _rms(v: torch.Tensor) -> torch.Tensor:
        return v.pow(2).mean(1).sqrt()

    def _forced_mask(self, length: int, device: torch.device) -> torch.Tensor:
        if self._forced is None:
            forced = torch.zeros(length, dtype=torch.bool, device=device)
            k = min(self.K, length) if self._frequency_domain() else 0
            if k:
                from tsdiff.diffusion.fourier import frequency_index

                order = torch.sort(frequency_index(length), stable=True).indices[:k]
                forced[order.to(device)] = True
            self._forced = forced
            self._stats.extra["K_effective"] = int(k)
        return self._forced

    def _frequency_domain(self) -> bool:
        return bool(getattr(self._module, "fourier_transform", False))

    # ------------------------------------------------------------------ pricing a reuse
    def _set_prices(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Step weight ``phi`` and output sensitivity ``omega`` at this evaluation (module docstring)."""
        batch = x.shape[0]
        t = t.reshape(-1).expand(batch) if t.numel() in (1, batch) else t
        schedule = getattr(self._spec, "schedule", None)
        ones = torch.ones(batch, device=x.device, dtype=torch.float32)
        if schedule is None:
            self._phi = ones
            self._sens = ones.view(batch, *([1] * (x.dim() - 1)))
            return
        alpha, sigma = schedule.alpha_sigma(t)
        alpha, sigma = alpha.to(x.device, torch.float32), sigma.to(x.device, torch.float32)
        lam = torch.log(alpha) - torch.log(sigma)
        self._phi = ones * 0.0 if self._lam_prev is None else 1.0 - torch.exp(-(lam - self._lam_prev).abs())
        self._lam_prev = lam
        if self._path != "output" and hasattr(self._module, "output_sensitivity"):
            self._sens = self._module.output_sensitivity(t, x.dim(), alpha_sigma=(alpha, sigma))
            return
        # plain denoiser: its output is x0 (or eps); unit data std assumed
        s = (sigma / alpha).view(batch, *([1] * (x.dim() - 1)))
        gain = s if getattr(self._spec, "parameterization", "x0") == "eps" else torch.ones_like(s)
        self._sens = gain / torch.sqrt(s**2 + 1.0)

    def _weighted(self, f: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rms_c(omega * f)`` per token ``(B, L, C) -> (B, L)`` (per sample ``(B, ...) -> (B,)`` on the
        output paths); ``f`` holds only batch rows ``rows`` when given."""
        sens = self._sens if rows is None or self._sens.shape[0] == 1 else self._sens.index_select(0, rows)
        w = sens * f
        if self._path == "output" or self._path == "network-output":
            return w.flatten(1).pow(2).mean(1).sqrt()
        return w.pow(2).mean(-1).sqrt()

    def _harm(self, u: torch.Tensor) -> torch.Tensor:
        """Predicted deviation ``g`` one more reuse adds, from the relative input change ``u`` ((B, L) or (B,))."""
        scale = self._weighted(self._F_ref)
        g = self._phi.view(-1, *([1] * (u.dim() - 1))) * self._kappa.view(-1, *([1] * (u.dim() - 1))) * u * scale
        if self._mult is not None and u.dim() == 2:
            g = g * self._mult
        return g

    def _measure(self, u: torch.Tensor, f_reuse: torch.Tensor, f_new: torch.Tensor, calibrate: bool,
                 rows: torch.Tensor | None = None) -> None:
        """Error feedback: compare the output drift a reuse would have had (``f_reuse - f_new``) with the
        prediction from ``u`` and update ``kappa`` (rows ``rows``, all when None) and the token
        corrections ``m``."""
        pick = (lambda v: v) if rows is None else (lambda v: v.index_select(0, rows))
        actual = self._weighted(f_reuse - f_new, rows)  # (b, L) or (b,)
        base = u * self._weighted(pick(self._F_ref), rows)
        mult = None
        if self._mult is not None and u.dim() == 2:
            mult = pick(self._mult)
            base = base * mult
        dims = tuple(range(1, u.dim()))
        obs = (actual.sum(dims) if dims else actual) / ((base.sum(dims) if dims else base) + _EPS)
        obs = obs.clamp(1e-3, 1e3)
        kappa = obs if calibrate else torch.sqrt(pick(self._kappa) * obs)
        self._kappa = kappa if rows is None else self._kappa.index_copy(0, rows, kappa)
        if mult is not None and not calibrate:
            pred = kappa[:, None] * base
            ratio = torch.where(pred > _EPS, (actual / (pred + _EPS)).sqrt().clamp(0.5, 2.0), torch.ones_like(pred))
            new = (mult * ratio).clamp(1.0 / 16.0, 16.0)
            self._mult = new if rows is None else self._mult.index_copy(0, rows, new)
        rel = (f_reuse - f_new).flatten(1).norm(dim=1) / (f_new.flatten(1).norm(dim=1) + _EPS)
        self._drifts.append(float(rel.mean()))

    # ------------------------------------------------------------------ entry point
    def _exact_everything(self) -> bool:
        return self.R == 1 or (self.tau_0 == 0.0 and self.selection == "event" and self.event_trigger)

    def __call__(self, denoise, x, t, cond, step):
        if self._path is None:
            raise RuntimeError("E2CRFCache was called before start(); the DiffusionSampler calls start() for you")
        self._step = int(step)
        if self._exact_everything():
            if self._path == "output":
                self._count(full=True, layers=1, length=_length(x), batch=x.shape[0], computed=_length(x) * x.shape[0])
            return denoise(x, t, cond)
        self._set_prices(x, t)
        if self._path == "output":
            return self._output_step(denoise, x, t, cond, step)
        # the model's denoise() keeps its representation and preconditioning and calls self._hook
        return denoise(x, t, cond)

    def _hook(self, y: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        """Replaces ``score_network(y, tt)`` inside the model's ``denoise`` during a sampling run."""
        step = self._step
        if self._exact_everything():
            layers = len(self._net.layers) if self._path in ("token", "step") else 1
            self._count(full=True, layers=layers, length=y.shape[1], batch=y.shape[0], computed=y.shape[1] * y.shape[0])
            return self._net(y, tt)
        if self._path == "step":
            return self._residual_step(y, tt, step)
        if self._path == "token":
            return self._token_step(y, tt, step)
        return self._output_step(lambda y_, t_, c_: self._net(y_, t_), y, tt, None, step)

    # ------------------------------------------------------------------ full forward (stores caches)
    def _full_rows(self, h0: torch.Tensor, rows: torch.Tensor | None, measure: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full forward of batch rows ``rows`` (all when None) from their input tokens ``h0``; stores K/V
        and residuals of every token of those rows. Returns the last hidden state and, when ``measure``,
        the hidden state a reuse of the cached residuals would have produced (before overwriting)."""
        acc = torch.zeros_like(h0) if measure else None
        h = h0
        new_layers: list[_LayerCache] = []
        for i, layer in enumerate(self._net.layers):
            q, k, v = layer.project_qkv(h)
            hm = h + layer.attend(q, k, v)
            out = hm + layer.feedforward_branch(hm)
            d = out - h
            if self._layers is not None:
                lc = self._layers[i]
                if measure:
                    acc += lc.d if rows is None else lc.d.index_select(0, rows)
                if rows is None:
                    lc.k, lc.v, lc.d = k.contiguous(), v.contiguous(), d
                else:
                    lc.k.index_copy_(0, rows, k.contiguous())
                    lc.v.index_copy_(0, rows, v.contiguous())
                    lc.d.index_copy_(0, rows, d)
            else:
                new_layers.append(_LayerCache(k.contiguous(), v.contiguous(), d))
            h = out
        if self._layers is None:
            self._layers = new_layers
        return h, (h0 + acc if measure else None)

    # ------------------------------------------------------------------ token path
    def _token_step(self, y: torch.Tensor, tt: torch.Tensor, step: int) -> torch.Tensor:
        net = self._net
        h0 = net.embed_tokens(y, tt)
        batch, length, _ = h0.shape
        n_layers = len(net.layers)
        first = self._layers is None
        if first or self._is_refresh(step):
            measure = (not first) and self._adapt(step)
            u = self._intensity(h0, self._h0_ref) if measure else None
            h, h_reuse = self._full_rows(h0, None, measure)
            out = net.readout(h)
            if first:
                self._mult = torch.ones(batch, length, device=h0.device)
                self._kappa = torch.ones(batch, device=h0.device)
            if measure:
                self._measure(u, net.readout(h_reuse), out, calibrate=step == 1)
            self._h0_ref = h0.clone()
            self._F_ref = out
            self._acc = torch.zeros(batch, length, device=h0.device)
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out

        sel, full, g = self._select(y, h0)
        counts = sel.sum(1)
        n_full_t = full.sum()
        n_max_t = counts.masked_fill(full, 0).max()
        n_full, n_max = (int(v) for v in torch.stack([n_full_t, n_max_t]).tolist())  # the one host sync per step
        out = torch.empty(batch, length, y.shape[-1], device=y.device, dtype=y.dtype)
        computed = 0
        extra = self._stats.extra
        if n_full:
            rows = full.nonzero().squeeze(1)
            if n_full == batch:
                h, _ = self._full_rows(h0, None, False)
                self._h0_ref = h0.clone()
                out = net.readout(h)
            else:
                h, _ = self._full_rows(h0.index_select(0, rows), rows, False)
                self._h0_ref.index_copy_(0, rows, h0.index_select(0, rows))
                out.index_copy_(0, rows, net.readout(h))
            computed += n_full * length
            extra["sample_full_recomputes"] = extra.get("sample_full_recomputes", 0) + n_full
        if n_full < batch:
            rows = None if n_full == 0 else (~full).nonzero().squeeze(1)
            n = max(n_max, 1)
            res = self._partial_rows(h0, sel, rows, n)
            if rows is None:
                out = res
            else:
                out.index_copy_(0, rows, res)
            computed += (batch - n_full) * n
        if g is not None:
            fresh = sel | full[:, None]
            self._acc = torch.where(fresh, torch.zeros_like(g), self._acc + g)
        self._F_ref = out
        self._count(full=n_full == batch, layers=n_layers, length=length, batch=batch, computed=computed)
        return out

    def _select(self, y: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Tokens to recompute ``(B, L)``, samples to recompute in full ``(B,)`` and the predicted
        deviation ``g`` of each token's reuse (None without the event trigger); on the device."""
        batch, length = h0.shape[:2]
        device = h0.device
        gen = self._generator(device)
        no_full = torch.zeros(batch, dtype=torch.bool, device=device)
        if self.selection == "random":
            n = max(1, int(round(self.budget * length)))
            pos = torch.rand(length, generator=gen, device=device).topk(n).indices
            sel = torch.zeros(length, dtype=torch.bool, device=device)
            sel[pos] = True
            return sel.expand(batch, length), no_full, None
        sel = self._forced_mask(length, device).expand(batch, length).clone()
        n_probe = int(round(self.random_probe_ratio * length))
        if n_probe:
            pos = torch.rand(length, generator=gen, device=device).topk(n_probe).indices
            sel[:, pos] = True
        full = no_full
        g = None
        if self.event_trigger and self.selection == "event":
            g = self._harm(self._intensity(h0, self._h0_ref))
            w = self._energy_weights(y)
            intensity = (self._acc + g) / w  # in units of the sample's rms (data std units without energy weighting)
            sel |= intensity > self.tau_0
            full = self._rms(intensity) > self.tau_warn
        full = full | (sel.sum(1) > self.full_fraction * length)
        if self.batch_sync:
            full = full.any().expand(batch)
        return sel, full, g

    def _partial_rows(self, h0: torch.Tensor, sel: torch.Tensor, rows: torch.Tensor | None, n: int) -> torch.Tensor:
        """Recompute the selected tokens of batch rows ``rows`` (all when None) in every layer, against
        all keys; reuse cached residuals/keys of the others. ``n`` tokens are gathered per sample
        (selected ones first; padding slots are computed but their results are discarded)."""
        net = self._net
        if rows is not None:
            h0 = h0.index_select(0, rows)
            sel = sel.index_select(0, rows)
        b, length, dm = h0.shape
        prio = sel.to(h0.dtype) + torch.arange(length, 0, -1, device=h0.device, dtype=h0.dtype) / (2.0 * length)
        idx = prio.topk(n, dim=1, sorted=False).indices  # (b, n) selected first, then padding
        valid = sel.gather(1, idx)  # (b, n)
        # selected (not padding) token slots, summed on the device; read once in finish()
        self._selected = valid.sum() * len(net.layers) + (self._selected if self._selected is not None else 0)
        idx_d = idx.unsqueeze(-1).expand(b, n, dm)
        h = h0
        for i, layer in enumerate(net.layers):
            lc = self._layers[i]
            kc = lc.k if rows is None else lc.k.index_select(0, rows)
            vc = lc.v if rows is None else lc.v.index_select(0, rows)
            dc = lc.d if rows is None else lc.d.index_select(0, rows)
            hs = h.gather(1, idx_d)
            q, k, v = layer.project_qkv(hs)
            heads, dh = k.shape[1], k.shape[3]
            idx_h = idx[:, None, :, None].expand(b, heads, n, dh)
            valid_h = valid[:, None, :, None]
            k = torch.where(valid_h, k, kc.gather(2, idx_h))
            v = torch.where(valid_h, v, vc.gather(2, idx_h))
            kc.scatter_(2, idx_h, k)
            vc.scatter_(2, idx_h, v)
            hm = hs + layer.attend(q, kc, vc)
            out = hm + layer.feedforward_branch(hm)
            d_new = torch.where(valid.unsqueeze(-1), out - hs, dc.gather(1, idx_d))
            dc.scatter_(1, idx_d, d_new)
            if rows is not None:
                lc.k.index_copy_(0, rows, kc)
                lc.v.index_copy_(0, rows, vc)
                lc.d.index_copy_(0, rows, dc)
            h = h + dc
        # the recomputed tokens' reference input is now the current one
        ref = self._h0_ref if rows is None else self._h0_ref.index_select(0, rows)
        ref.scatter_(1, idx_d, torch.where(valid.unsqueeze(-1), h0.gather(1, idx_d), ref.gather(1, idx_d)))
        if rows is not None:
            self._h0_ref.index_copy_(0, rows, ref)
        return net.readout(h)

    # ------------------------------------------------------------------ step path (transformer)
    def _residual_step(self, y: torch.Tensor, tt: torch.Tensor, step: int) -> torch.Tensor:
        net = self._net
        h0 = net.embed_tokens(y, tt)
        batch, length, _ = h0.shape
        n_layers = len(net.layers)
        if self._D is None or self._is_refresh(step):
            h = self._forward_plain(h0)
            out = net.readout(h)
            if self._D is None:
                self._kappa = torch.ones(batch, device=h0.device)
            elif self._adapt(step):
                u = self._intensity(h0, self._h0_ref)
                self._measure(u, net.readout(h0 + self._D), out, calibrate=step == 1)
            self._D = h - h0
            self._h0_ref = h0.clone()
            self._F_ref = out
            self._acc = torch.zeros(batch, device=h0.device)
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out
        n_need, g = 0, None
        if self.event_trigger and self.selection == "event":
            u = self._intensity(h0, self._h0_ref)
            g = self._rms(self._harm(u) / self._energy_weights(y))  # (B,) in units of the sample's rms
            intensity = self._acc + g
            need = intensity.mean() > self.tau_0 if self.batch_sync else intensity > self.tau_0
            need = need.expand(batch) if need.dim() == 0 else need
            n_need = int(need.sum())  # the one host sync per step
        # the reused output, for the samples that are not recomputed (skipped when all are)
        out = net.readout(h0 + self._D) if n_need < batch else None
        if n_need:
            rows = None if n_need == batch else need.nonzero().squeeze(1)
            pick = (lambda v: v) if rows is None else (lambda v: v.index_select(0, rows))
            h0r = pick(h0)
            h = self._forward_plain(h0r)
            fresh = net.readout(h)
            if rows is None:
                out = fresh
                self._D = h - h0
                self._h0_ref = h0.clone()
            else:
                out.index_copy_(0, rows, fresh)
                self._D.index_copy_(0, rows, h - h0r)
                self._h0_ref.index_copy_(0, rows, h0r)
        if g is not None:
            self._acc = torch.where(need, torch.zeros_like(g), self._acc + g)
        self._F_ref = out
        self._count(full=n_need == batch, layers=n_layers, length=length, batch=batch, computed=n_need * length)
        return out

    def _forward_plain(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self._net.layers:
            h = layer(h)
        return h

    # ------------------------------------------------------------------ step path (any denoiser)
    def _output_step(self, denoise, x, t, cond, step):
        """Step-level reuse of a whole output (networks without token structure, plain denoisers)."""
        batch = x.shape[0]
        length = _length(x)

        def rel_change(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return (a - ref).flatten(1).norm(dim=1) / (ref.flatten(1).norm(dim=1) + _EPS)

        if self._out_ref is None or self._is_refresh(step):
            out = denoise(x, t, cond)
            if self._out_ref is None:
                self._kappa = torch.ones(batch, device=x.device)
            elif self._adapt(step):
                self._measure(rel_change(x, self._x_ref), self._out_ref, out, calibrate=step == 1)
            self._out_ref, self._x_ref, self._F_ref = out.clone(), x.clone(), out.clone()
            self._acc = torch.zeros(batch, device=x.device)
            self._count(full=True, layers=1, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out
        n_need, g = 0, None
        if self.event_trigger and self.selection == "event":
            u = rel_change(x, self._x_ref)
            g = self._harm(u)
            need = self._acc + g > self.tau_0
            n_need = int(need.sum())  # the one host sync per step
        out = self._out_ref.clone()
        if n_need == batch:
            out = denoise(x, t, cond)
            self._out_ref, self._x_ref = out.clone(), x.clone()
        elif n_need:
            rows = need.nonzero().squeeze(1)
            sub_cond = cond.index_select(0, rows) if isinstance(cond, torch.Tensor) and cond.shape[:1] == (batch,) else cond
            if sub_cond is not None and not isinstance(sub_cond, torch.Tensor):
                raise ValueError(
                    "E2-CRF output reuse recomputes single samples and can only slice tensor conditioning; "
                    "use use_cache=false for this conditioning"
                )
            res = denoise(x.index_select(0, rows), t.index_select(0, rows), sub_cond)
            out.index_copy_(0, rows, res)
            self._out_ref.index_copy_(0, rows, res)
            self._x_ref.index_copy_(0, rows, x.index_select(0, rows))
        if g is not None:
            self._acc = torch.where(need, torch.zeros_like(g), self._acc + g)
        self._F_ref = out
        self._count(full=n_need == batch, layers=1, length=length, batch=batch, computed=n_need * length)
        return out
