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

Event intensity (the cumulative-residual change), per sample, on the device
    The quantity that matters is how far a token's cumulative residual ``sum_l D_l[i]`` has drifted since
    it was computed, but observing it needs the network. It is predicted from the cheap relative change
    of the token's layer-0 input, ``u_i = |h_0[i] - h_0^ref[i]| / |h_0^ref[i]|``, times a per-sample
    sensitivity ``kappa_b`` = (measured residual drift) / (measured input change). ``kappa`` is calibrated
    on the second evaluation (which is always full) and re-measured at every refresh (geometric running
    mean). Under SDE sampling the input moves ~40% per step while the residual moves ~7% (measured on the
    stocks model), so without ``kappa`` thresholds like ``tau_0 = 0.1`` would recompute everything.
    The event intensity is ``I_i = kappa_b * u_i``, in units of relative residual drift.

Which tokens are recomputed
    * the ``K`` lowest-frequency tokens (order of :func:`tsdiff.diffusion.fourier.frequency_index`:
      DC, then real/imaginary parts of frequency 1, 2, ...) -- always. In the *time* domain tokens have
      no frequency order, so ``K`` is ignored there (no forced tokens; ``stats.extra["K_effective"]``
      says 0);
    * *events*: tokens with ``I_i > tau_i = tau_0 * w_i * m_i``. ``w_i = clip(sqrt(mean_j E_j / E_i), 1/4, 4)``
      is the energy weight (``E_i`` the token's spectral energy: mean square of the network input at
      that frequency), so energetic components -- which dominate the sample -- get a lower threshold;
      ``m_i`` is the error-feedback multiplier (below);
    * random probes: ``round(random_probe_ratio * L)`` positions drawn per step from the policy's own
      seeded generator, shared by the whole batch, so that cached tokens are re-measured now and then;
    * a sample whose energy-weighted mean intensity exceeds ``tau_warn`` (or that selects more than
      ``full_fraction`` of its tokens, where gathering cannot pay) is recomputed in full.

Error feedback (every ``R`` steps)
    Every ``R``-th evaluation recomputes everything (a refresh) and, before overwriting the caches,
    measures each token's drift ``e_i = |sum_l (D_l^new[i] - D_l^cached[i])| / rms_j |sum_l D_l^new[j]|``.
    The threshold multiplier is steered towards the error target (``error_target``, default ``tau_0``):
    ``m_i <- clip(m_i * clip(sqrt(target / e_i), 1/2, 2), 1/16, 16)`` -- tokens whose cache drifted too
    far are recomputed more readily afterwards, tokens that stayed accurate are cached longer; ``kappa``
    is re-measured at the same time. With ``error_feedback=False`` both stay at their calibrated values.

Step-level path (``mode="step"``)
    At batch 1 on small models the gathers, scatters and Python overhead of the token path cost about
    as much as the work they save. The step-level path caches the whole network's residual
    ``D = h_L - h_0`` per sample and, on a reused step, returns ``readout(h_0 + D)`` with the fresh
    input embedding: one embedding and one read-out instead of all layers. A sample is recomputed when
    its energy-weighted mean intensity exceeds ``tau_0 * s_b`` (``s_b`` its error-feedback scale, steered
    by the residual drift measured whenever the sample is recomputed, like ``m_i``); every ``R``-th
    evaluation is a full refresh. ``tau_warn`` and the probes have no role on this path. ``mode="auto"`` (default) takes the token path when the sequence has at least
    ``AUTO_TOKEN_MIN_LEN`` tokens and the batch at least ``AUTO_TOKEN_MIN_BATCH`` samples, the step path
    otherwise (see the benchmark in ``cmd/benchmark_cache.py`` for the measurements behind this rule).

Other score networks (LSTM, plain callables)
    Have no token structure to gather: they get the step-level path on the network *output* ``F``
    (a reused step returns the sample's last computed ``F``; the model's skip term stays fresh), with the
    intensity measured on the network input (plain callables without a hook: on the whole denoiser
    output). ``mode="token"`` on them raises a clear error; ``stats.extra["path"]`` always says which path
    ran.

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
(fixed thresholds), ``energy_weighting=False`` (``w_i = 1``, plain-mean sample intensity),
``selection="random"`` (recompute a random ``budget`` fraction of tokens per step),
``selection="fixed"`` (naive caching: reuse everything between refreshes every ``R`` steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tsdiff.caching.base import CachePolicy, CacheStats

#: ``mode="auto"`` uses the token path from this many tokens (and ``AUTO_TOKEN_MIN_BATCH`` samples per
#: chunk), the step path otherwise. Measured on 2 CPU cores with the default 4-layer d_model-64 transformer
#: (cmd/benchmark_cache.py, 100 Euler-Maruyama steps): the step path won at every measured length and batch
#: (L=24: 1.4x / 2.0x at batch 1 / 64; L=96, batch 64: step 3.9x vs token 1.4x at tau_0=0.1, 6.0x vs 2.0x at
#: tau_0=0.2), because reusing the whole residual costs one embedding + read-out while the token path still
#: pays the forced, probed and event tokens, refreshes, gathers and scatters. The token path's per-forward
#: gain grows with length (10% of tokens: 2.5x at L=24, 3.4x at L=96, 4.7x at L=192, batch 64), so it is
#: kept for long sequences, where it is untested against the step path: auto only picks it from 512 tokens.
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
        tau_0: base event threshold on the relative change of a token's input (>= 0; 0 recomputes all).
        R: a full refresh (with error-feedback measurement) every ``R`` evaluations (integer >= 1; 1
            recomputes everything).
        tau_warn: a sample whose mean event intensity exceeds this is recomputed in full (> 0).
        random_probe_ratio: fraction of tokens probed at random each step (in [0, 1]).
        mode: ``"auto"``, ``"token"`` or ``"step"`` (see module docstring).
        event_trigger, error_feedback, energy_weighting: switch the three mechanisms off for ablations.
        selection: ``"event"`` (E2-CRF), ``"random"`` (a random ``budget`` fraction of tokens per step,
            token path) or ``"fixed"`` (naive reuse of everything between refreshes every ``R`` steps).
        budget: fraction of tokens recomputed per step by ``selection="random"`` (in (0, 1]).
        error_target: drift the error feedback steers towards (> 0; default ``tau_0``, or 0.1 when
            ``tau_0`` is 0).
        full_fraction: a sample selecting more than this fraction of its tokens is computed in full
            (in (0, 1]); gathering most tokens costs more than computing them all.
        batch_sync: take recompute decisions for the whole chunk (mean predicted drift against the mean
            threshold; any sample's full recompute makes the step full) instead of per sample. Small
            networks cost about the same for 3 rows as for 64, so per-sample decisions that fire at
            different steps fragment the work; synchronised decisions avoid that but make a sample's
            result depend on its batch neighbours (no data is mixed, only the schedule). Off by default.
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
        error_target: float | None = None,
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
        if error_target is not None:
            _check_number("error_target", error_target, 0.0, None, lo_open=True)
        for name, flag in (("batch_sync", batch_sync), ("event_trigger", event_trigger), ("error_feedback", error_feedback), ("energy_weighting", energy_weighting)):
            if not isinstance(flag, bool):
                raise ValueError(f"cache_kwargs.{name} must be true or false, got {flag!r}")
        self.K, self.tau_0, self.R, self.tau_warn = int(K), float(tau_0), int(R), float(tau_warn)
        self.random_probe_ratio = float(random_probe_ratio)
        self.mode, self.selection, self.budget = mode, selection, budget
        self.event_trigger, self.error_feedback, self.energy_weighting = event_trigger, error_feedback, energy_weighting
        self.error_target = float(error_target) if error_target is not None else (self.tau_0 if self.tau_0 > 0 else 0.1)
        self.full_fraction = float(full_fraction)
        self.batch_sync = batch_sync
        self.seed = int(seed)
        self._stats = CacheStats()
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle
    def _reset_state(self) -> None:
        self._net = None
        self._module = None
        self._path = None
        self._layers: list[_LayerCache] | None = None
        self._h0_ref: torch.Tensor | None = None  # (B, L, d) layer-0 input at each token's last recompute
        self._mult: torch.Tensor | None = None  # (B, L) token threshold multipliers (error feedback)
        self._D: torch.Tensor | None = None  # step path: (B, L, d) whole-network residual
        self._out_ref: torch.Tensor | None = None  # generic step path: last output
        self._x_ref: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None  # (B,) step-path threshold scales
        self._kappa: torch.Tensor | None = None  # (B,) sensitivity: residual drift per unit input change
        self._forced: torch.Tensor | None = None
        self._gen: torch.Generator | None = None
        self._drifts: list[float] = []
        self._selected: torch.Tensor | None = None
        self._hooked = False
        self._step = 0

    def start(self, denoiser: Any, num_steps: int, batch_size: int) -> None:
        """Reset all state for a new chunk, pick the path, and install the network hook."""
        self._reset_state()
        self._stats = CacheStats()
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

    def finish(self) -> CacheStats:
        """Remove the network hook, free every cached tensor and return the statistics of the run."""
        stats = self._stats
        if self._selected is not None:
            # token slots of partially computed samples that were truly selected (the rest is padding)
            stats.extra["tokens_selected_partial"] = int(self._selected)
        if self._drifts:
            stats.extra["mean_refresh_drift"] = float(sum(self._drifts) / len(self._drifts))
        if self._hooked and self._module is not None and self._module.network_hook == self._hook:
            self._module.network_hook = None
        self._stats = CacheStats()
        self._reset_state()
        return stats

    @property
    def holds_state(self) -> bool:
        """Whether any cached tensor is alive (False after ``finish``)."""
        return any(t is not None for t in (self._layers, self._h0_ref, self._D, self._out_ref, self._mult, self._scale, self._kappa))

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def _is_refresh(self, step: int) -> bool:
        """Full evaluations: every ``R``-th, plus the second one, which calibrates the sensitivity."""
        return step % self.R == 0 or step == 1

    def _adapt(self, step: int) -> bool:
        """Whether measurements at this evaluation may change thresholds / sensitivity: always at the
        calibration step, afterwards only with error feedback."""
        return self.selection == "event" and (step == 1 or self.error_feedback)

    def _update_kappa(self, kappa: torch.Tensor, drift: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """Sensitivity ``kappa = residual drift / input change`` (per sample), smoothed over measurements."""
        obs = (drift / (intensity + _EPS)).clamp(1e-3, 1e3)
        return torch.sqrt(kappa * obs)  # geometric mean of the old estimate and the new observation

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
        tensors += [t for t in (self._h0_ref, self._mult, self._D, self._out_ref, self._x_ref, self._scale) if t is not None]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._stats.cache_bytes = max(self._stats.cache_bytes, nbytes)

    @staticmethod
    def _intensity(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-token event intensity: relative change ``|h - ref| / |ref|`` over the last dim -> (B, L)."""
        return (h - ref).norm(dim=-1) / (ref.norm(dim=-1) + _EPS)

    def _energy(self, y: torch.Tensor) -> torch.Tensor:
        """Per-token spectral energy of the network input ``(B, L, C) -> (B, L)``."""
        return y.pow(2).mean(dim=-1)

    def _sample_intensity(self, intensity: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        if self.energy_weighting:
            return (intensity * energy).sum(1) / (energy.sum(1) + _EPS)
        return intensity.mean(1)

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

    # ------------------------------------------------------------------ entry point
    def _exact_everything(self) -> bool:
        return self.R == 1 or (self.tau_0 == 0.0 and self.selection == "event" and self.event_trigger)

    def __call__(self, denoise, x, t, cond, step):
        if self._path is None:
            raise RuntimeError("E2CRFCache was called before start(); the DiffusionSampler calls start() for you")
        self._step = int(step)
        if self._path == "output":
            if self._exact_everything():
                self._count(full=True, layers=1, length=_length(x), batch=x.shape[0], computed=_length(x) * x.shape[0])
                return denoise(x, t, cond)
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
        the per-token drift of the cached residuals (before overwriting)."""
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
                    old = lc.d if rows is None else lc.d.index_select(0, rows)
                    acc += d - old
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
        drift = None
        if measure:
            total = h - h0
            scale = total.norm(dim=-1).pow(2).mean(1, keepdim=True).sqrt() + _EPS  # (b, 1) rms token norm
            drift = acc.norm(dim=-1) / scale
        return h, drift

    def _feedback(self, mult: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
        """Error-feedback update of threshold multipliers from measured drift (same shapes)."""
        factor = (self.error_target / (drift + _EPS)).sqrt().clamp(0.5, 2.0)
        return (mult * factor).clamp(1.0 / 16.0, 16.0)

    # ------------------------------------------------------------------ token path
    def _token_step(self, y: torch.Tensor, tt: torch.Tensor, step: int) -> torch.Tensor:
        net = self._net
        h0 = net.embed_tokens(y, tt)
        batch, length, _ = h0.shape
        n_layers = len(net.layers)
        first = self._layers is None
        if first or self._is_refresh(step):
            measure = (not first) and self._adapt(step)
            inten = self._intensity(h0, self._h0_ref) if measure else None
            h, drift = self._full_rows(h0, None, measure)
            self._h0_ref = h0.clone()
            if self._mult is None:
                self._mult = torch.ones(batch, length, device=h0.device)
                self._kappa = torch.ones(batch, device=h0.device)
            if drift is not None:
                self._kappa = self._update_kappa(self._kappa, drift.mean(1), inten.mean(1))
                if step > 1:
                    self._mult = self._feedback(self._mult, drift)
                self._drifts.append(float(drift.mean()))  # once per refresh, not per token
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return net.readout(h)

        sel = self._select(y, h0)  # (B, L) bool, plus per-sample full flags
        sel, full = sel
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
        self._count(full=n_full == batch, layers=n_layers, length=length, batch=batch, computed=computed)
        return out

    def _select(self, y: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens to recompute ``(B, L)`` and samples to recompute in full ``(B,)``; on the device."""
        batch, length = h0.shape[:2]
        device = h0.device
        gen = self._generator(device)
        if self.selection == "random":
            n = max(1, int(round(self.budget * length)))
            pos = torch.rand(length, generator=gen, device=device).topk(n).indices
            sel = torch.zeros(length, dtype=torch.bool, device=device)
            sel[pos] = True
            return sel.expand(batch, length), torch.zeros(batch, dtype=torch.bool, device=device)
        sel = self._forced_mask(length, device).expand(batch, length).clone()
        n_probe = int(round(self.random_probe_ratio * length))
        if n_probe:
            pos = torch.rand(length, generator=gen, device=device).topk(n_probe).indices
            sel[:, pos] = True
        full = torch.zeros(batch, dtype=torch.bool, device=device)
        if self.event_trigger:
            intensity = self._kappa[:, None] * self._intensity(h0, self._h0_ref)
            energy = self._energy(y)
            tau = self.tau_0 * self._mult
            if self.energy_weighting:
                w = (energy.mean(1, keepdim=True) / (energy + _EPS)).sqrt().clamp(0.25, 4.0)
                tau = tau * w
            sel |= intensity > tau
            full = self._sample_intensity(intensity, energy) > self.tau_warn
        full |= sel.sum(1) > self.full_fraction * length
        if self.batch_sync:
            full = full.any().expand(batch)
        return sel, full

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
        energy = self._energy(y)
        if self._D is None or self._is_refresh(step):
            h = self._forward_plain(h0)
            if self._D is None:
                self._scale = torch.ones(batch, device=h0.device)
                self._kappa = torch.ones(batch, device=h0.device)
            elif self._adapt(step):
                inten = self._sample_intensity(self._intensity(h0, self._h0_ref), energy)
                drift = self._rel(h - h0, self._D)
                self._kappa = self._update_kappa(self._kappa, drift, inten)
                if step > 1:
                    self._scale = self._feedback(self._scale, drift)
                self._drifts.append(float(drift.mean()))
            self._D = h - h0
            self._h0_ref = h0.clone()
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return net.readout(h)
        if self.event_trigger and self.selection == "event":
            inten = self._sample_intensity(self._intensity(h0, self._h0_ref), energy)
            pred, limit = self._kappa * inten, self.tau_0 * self._scale
            need = pred.mean() > limit.mean() if self.batch_sync else pred > limit
            need = need.expand(batch) if need.dim() == 0 else need
            n_need = int(need.sum())  # the one host sync per step
        else:
            n_need = 0
        out = net.readout(h0 + self._D)
        if n_need:
            rows = None if n_need == batch else need.nonzero().squeeze(1)
            pick = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows))
            h0r = pick(h0)
            h = self._forward_plain(h0r)
            if self.error_feedback:
                drift = self._rel(h - h0r, pick(self._D))
                kappa = self._update_kappa(pick(self._kappa), drift, pick(inten))
                self._kappa = kappa if rows is None else self._kappa.index_copy(0, rows, kappa)
            if rows is None:
                out = net.readout(h)
                self._D = h - h0
                self._h0_ref = h0.clone()
            else:
                out.index_copy_(0, rows, net.readout(h))
                self._D.index_copy_(0, rows, h - h0r)
                self._h0_ref.index_copy_(0, rows, h0r)
        self._count(full=n_need == batch, layers=n_layers, length=length, batch=batch, computed=n_need * length)
        return out

    @staticmethod
    def _rel(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Per-sample relative change ``|new - old| / |new|`` -> (B,)."""
        return (new - old).flatten(1).norm(dim=1) / (new.flatten(1).norm(dim=1) + _EPS)

    def _forward_plain(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self._net.layers:
            h = layer(h)
        return h

    # ------------------------------------------------------------------ step path (any denoiser)
    def _output_step(self, denoise, x, t, cond, step):
        """Step-level reuse of a whole output (networks without token structure, plain denoisers)."""
        batch = x.shape[0]
        length = _length(x)
        if self._out_ref is None or self._is_refresh(step):
            out = denoise(x, t, cond)
            if self._out_ref is None:
                self._scale = torch.ones(batch, device=x.device)
                self._kappa = torch.ones(batch, device=x.device)
            elif self._adapt(step):
                drift = self._rel(out, self._out_ref)
                self._kappa = self._update_kappa(self._kappa, drift, self._rel(x, self._x_ref))
                if step > 1:
                    self._scale = self._feedback(self._scale, drift)
                self._drifts.append(float(drift.mean()))
            self._out_ref, self._x_ref = out.clone(), x.clone()
            self._count(full=True, layers=1, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out
        if self.event_trigger and self.selection == "event":
            # relative input change |x - x_ref| / |x_ref| (``_rel`` normalises by its first argument's reference)
            inten = (x - self._x_ref).flatten(1).norm(dim=1) / (self._x_ref.flatten(1).norm(dim=1) + _EPS)
            need = self._kappa * inten > self.tau_0 * self._scale
            n_need = int(need.sum())  # the one host sync per step
        else:
            n_need = 0
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
        self._count(full=n_need == batch, layers=1, length=length, batch=batch, computed=n_need * length)
        return out
