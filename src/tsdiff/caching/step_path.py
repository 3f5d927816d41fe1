"""E2-CRF step path: reuse a sample's whole network computation between steps (DeepCache/TeaCache-style).

On token networks the cache holds the whole residual ``D = h_L - h_0`` of each sample; a reused step
returns ``readout(h_0 + D)`` with the fresh input embedding (one embedding and one read-out instead of
all layers). Networks without token blocks (LSTM, convolutions) reuse their last output ``F``
(``"network-output"``; the model's skip term stays fresh), and plain denoisers without a cache interface
their whole output (``"output"``). A sample is recomputed when its accumulated priced deviation passes
``tau_0`` (:mod:`tsdiff.caching.pricing`) and at every refresh. ``selection="fixed"`` is the naive
baseline: reuse everything between refreshes every ``R`` steps. Measurements: ``docs/e2crf.md``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tsdiff.caching.e2crf_base import E2CRFPolicy
from tsdiff.caching.interface import CacheInterface
from tsdiff.caching.pricing import EPS


def _rel_change(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (a - ref).flatten(1).norm(dim=1) / (ref.flatten(1).norm(dim=1) + EPS)


class StepE2CRF(E2CRFPolicy):
    """Step-level E2-CRF (see the module docstring; options in :class:`E2CRFPolicy`)."""

    SELECTIONS = ("event", "fixed")

    def __init__(self, tau_0: float | str = "auto", R: int = 10, **common):
        super().__init__(tau_0, R, **common)
        self.mode = "step"

    def _reset_state(self) -> None:
        super()._reset_state()
        self._h0_ref: torch.Tensor | None = None  # (B, L, d) input embedding at the last recompute
        self._D: torch.Tensor | None = None  # (B, L, d) whole-network residual (token networks)
        self._D_prev: torch.Tensor | None = None  # forecast="linear": the residual computed before _D
        self._t_ref: torch.Tensor | None = None  # (B,) network time of _D / of _D_prev (NaN: none yet)
        self._t_prev: torch.Tensor | None = None
        self._out_ref: torch.Tensor | None = None  # output paths: last computed output
        self._x_ref: torch.Tensor | None = None  # output paths: its input

    def _choose_path(self, iface: CacheInterface | None) -> str:
        if iface is None:
            return "output"
        return "step" if iface.tokens is not None else "network-output"

    def _cached_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self._h0_ref, self._D, self._D_prev, self._out_ref, self._x_ref) if t is not None]

    def _store(self, rows: torch.Tensor | None, d: torch.Tensor, h0: torch.Tensor, t: torch.Tensor) -> None:
        """Keep freshly computed residuals ``d`` (input embedding ``h0``, network time ``t``) of batch rows
        ``rows`` (all when None); with ``forecast="linear"`` the previous ones move to ``_D_prev``."""
        if self._D is None:
            self._D, self._h0_ref, self._t_ref = d, h0.clone(), t.clone()
            self._t_prev = torch.full_like(t, float("nan"))
            return
        linear = self.forecast == "linear"
        if rows is None:
            if linear:
                self._D_prev, self._t_prev = self._D, self._t_ref
            self._D, self._h0_ref, self._t_ref = d, h0.clone(), t.clone()
            return
        if linear:
            if self._D_prev is None:
                self._D_prev = self._D.clone()
            self._D_prev.index_copy_(0, rows, self._D.index_select(0, rows))
            self._t_prev = self._t_prev.index_copy(0, rows, self._t_ref.index_select(0, rows))
        self._D.index_copy_(0, rows, d)
        self._h0_ref.index_copy_(0, rows, h0)
        self._t_ref = self._t_ref.index_copy(0, rows, t)

    def _reused(self, t: torch.Tensor) -> torch.Tensor:
        """The residual a reuse adds at network time ``t``: held, or forecast from the last two."""
        if self.forecast == "hold":
            return self._D
        return self.extrapolate(self._D, self._D_prev, t, self._t_ref, self._t_prev)

    # ------------------------------------------------------------------ token networks: whole residual
    def _network(self, y: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        if self._path == "network-output":
            return self._evaluate_output(lambda y_, t_, c_: self._iface.network(y_, t_), y, tt, None)
        net, step, pricer = self._iface.tokens, self._step, self.pricer
        h0 = net.embed_tokens(y, tt)
        batch, length, _ = h0.shape
        tb = tt.reshape(-1).expand(batch).to(torch.float32)
        n_layers = len(net.layers)
        if self._D is None or self._is_refresh(step):
            h = self._forward_layers(h0)
            out = net.readout(h)
            if self._D is None:
                pricer.kappa = torch.ones(batch, device=h0.device)
            elif self._adapt(step):
                u = pricer.intensity(h0, self._h0_ref)
                pricer.measure(u, net.readout(h0 + self._reused(tb)), out, calibrate=step == 1)
            self._store(None, h - h0, h0, tb)
            pricer.F_ref = out
            self._acc = torch.zeros(batch, device=h0.device)
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out
        n_need, g = 0, None
        if self.event_trigger and self.selection == "event":
            u = pricer.intensity(h0, self._h0_ref)
            g = pricer.rms(pricer.harm(u) / pricer.energy_weights(y))  # (B,) in units of the sample's rms
            intensity = self._acc + g
            need = intensity.mean() > self.tau_0 if self.batch_sync else intensity > self.tau_0
            need = need.expand(batch) if need.dim() == 0 else need
            n_need = int(need.sum())  # the one host sync per step
        # the reused output, for the samples that are not recomputed (skipped when all are)
        out = net.readout(h0 + self._reused(tb)) if n_need < batch else None
        if n_need:
            rows = None if n_need == batch else need.nonzero().squeeze(1)
            h0r = h0 if rows is None else h0.index_select(0, rows)
            h = self._forward_layers(h0r)
            fresh = net.readout(h)
            if rows is None:
                out = fresh
            else:
                out.index_copy_(0, rows, fresh)
            self._store(rows, h - h0r, h0r, tb if rows is None else tb.index_select(0, rows))
        if g is not None:
            self._acc = torch.where(need, torch.zeros_like(g), self._acc + g)
        pricer.F_ref = out
        self._count(full=n_need == batch, layers=n_layers, length=length, batch=batch, computed=n_need * length)
        return out

    def _forward_layers(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self._iface.tokens.layers:
            h = layer(h)
        return h

    # ------------------------------------------------------------------ any network / denoiser: whole output
    def _evaluate_output(self, denoise: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Step-level reuse of a whole output (networks without token blocks, plain denoisers)."""
        batch = x.shape[0]
        length = x.shape[1] if x.dim() > 1 else 1
        step, pricer = self._step, self.pricer
        if self._out_ref is None or self._is_refresh(step):
            out = denoise(x, t, cond)
            if self._out_ref is None:
                pricer.kappa = torch.ones(batch, device=x.device)
            elif self._adapt(step):
                pricer.measure(_rel_change(x, self._x_ref), self._out_ref, out, calibrate=step == 1)
            self._out_ref, self._x_ref, pricer.F_ref = out.clone(), x.clone(), out.clone()
            self._acc = torch.zeros(batch, device=x.device)
            self._count(full=True, layers=1, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out
        n_need, g = 0, None
        if self.event_trigger and self.selection == "event":
            g = pricer.harm(_rel_change(x, self._x_ref))
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
                    "use cache=none (use_cache=false) for this conditioning"
                )
            res = denoise(x.index_select(0, rows), t.index_select(0, rows), sub_cond)
            out.index_copy_(0, rows, res)
            self._out_ref.index_copy_(0, rows, res)
            self._x_ref.index_copy_(0, rows, x.index_select(0, rows))
        if g is not None:
            self._acc = torch.where(need, torch.zeros_like(g), self._acc + g)
        pricer.F_ref = out
        self._count(full=n_need == batch, layers=1, length=length, batch=batch, computed=n_need * length)
        return out
