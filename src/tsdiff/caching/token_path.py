"""E2-CRF token path: recompute only the tokens whose reuse would cost the sample too much.

Per layer ``l`` and token ``i`` the cache holds the keys/values ``K_l[i], V_l[i]`` of the layer input at
the token's last recompute and its cumulative residual ``D_l[i] = layer_l(h)[i] - h[i]``. On a partial
step the input embedding is computed for every token; in every layer the selected tokens are gathered
and only for them are queries, keys, values, attention against *all* keys (fresh for selected tokens,
cached for the rest), and the layer's residual composition (:meth:`TokenLayer.compose`, the same function
the plain forward uses) computed; the others advance by their cached ``D_l`` (held, or forecast with
``forecast="linear"``). The read-out runs on all tokens. Tokens may be patches of positions (a patched
transformer). Selected: the ``K`` lowest frequencies (frequency domain only), random probes, and tokens
whose priced intensity passes ``tau_0`` (:mod:`tsdiff.caching.pricing`); a sample selecting too much is
computed in full. Every decision is per sample and the selected tokens of all samples are computed as one
flat list (no padding), so a sample's result does not depend on its batch neighbours. Measurements:
``docs/e2crf.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsdiff.caching.e2crf_base import E2CRFPolicy
from tsdiff.caching.interface import CacheInterface, TokenNetwork
from tsdiff.caching.pricing import check_number


@dataclass
class LayerCache:
    k: torch.Tensor  # (B, L, d_model) keys (heads side by side) from the layer input at each token's last recompute
    v: torch.Tensor  # (B, L, d_model)
    d: torch.Tensor  # (B, L, d_model) the layer's residual contribution  layer(h) - h
    d_prev: torch.Tensor | None = None  # forecast="linear": each token's residual computed before ``d``


class TokenE2CRF(E2CRFPolicy):
    """Token-level E2-CRF (see the module docstring; common options in :class:`E2CRFPolicy`).

    Args:
        K: low-frequency tokens always recomputed (integer >= 0; frequency domain only).
        tau_warn: a sample whose rms event intensity exceeds this is recomputed in full (> 0).
        random_probe_ratio: fraction of tokens probed at random each step (in [0, 1]).
        full_fraction: a sample selecting more than this fraction of its tokens is computed in full.
        selection: ``"event"`` (E2-CRF), ``"random"`` (a random ``budget`` fraction per step) or
            ``"fixed"`` (only forced tokens and probes between refreshes).
        budget: fraction of tokens recomputed per step by ``selection="random"`` (in (0, 1]).
    """

    SELECTIONS = ("event", "random", "fixed")

    def __init__(self, K: int = 5, tau_0: float | str = "auto", R: int = 10, tau_warn: float = 0.5, random_probe_ratio: float = 0.05,
                 *, full_fraction: float = 0.5, budget: float | None = None, selection: str = "event", **common):
        check_number("K", K, 0, None, integer=True)
        check_number("tau_warn", tau_warn, 0.0, None, lo_open=True)
        check_number("random_probe_ratio", random_probe_ratio, 0.0, 1.0)
        check_number("full_fraction", full_fraction, 0.0, 1.0, lo_open=True)
        if selection == "random":
            if budget is None:
                raise ValueError("cache_kwargs.selection='random' needs cache_kwargs.budget (fraction of tokens per step, in (0, 1])")
            check_number("budget", budget, 0.0, 1.0, lo_open=True)
        elif budget is not None:
            raise ValueError("cache_kwargs.budget is only used with selection='random'; drop it or set selection='random'")
        super().__init__(tau_0, R, selection=selection, **common)
        self.K, self.tau_warn, self.random_probe_ratio = int(K), float(tau_warn), float(random_probe_ratio)
        self.full_fraction, self.budget = float(full_fraction), budget
        self.mode = "token"

    def _reset_state(self) -> None:
        super()._reset_state()
        self._net: TokenNetwork | None = None
        self._layers: list[LayerCache] | None = None
        self._h0_ref: torch.Tensor | None = None  # (B, L, d) layer-0 input at each token's last recompute
        self._forced: torch.Tensor | None = None
        self._selected: torch.Tensor | None = None
        self._t_ref: torch.Tensor | None = None  # (B, L) network time of each token's last recompute
        self._t_prev: torch.Tensor | None = None  # (B, L) ... of the one before (NaN: none yet)

    def _choose_path(self, iface: CacheInterface | None) -> str:
        if iface is None or iface.tokens is None:
            kind = "a plain denoiser" if iface is None else type(iface.network).__name__
            raise ValueError(
                f"the token-level E2-CRF path needs a transformer score network that declares token blocks "
                f"(one position per token), got {kind}; "
                "use cache=e2crf_step or cache_kwargs.mode='step' (or 'auto'), which reuses whole network outputs between steps"
            )
        self._net = iface.tokens
        return "token"

    def _cached_tensors(self) -> list[torch.Tensor]:
        tensors = [t for lc in self._layers or [] for t in (lc.k, lc.v, lc.d, lc.d_prev) if t is not None]
        return tensors + ([self._h0_ref] if self._h0_ref is not None else [])

    def _finish_extra(self, stats) -> None:
        if self._selected is not None:
            # token slots of partially computed samples that were truly selected (the rest is padding)
            stats.extra["tokens_selected_partial"] = int(self._selected)

    # ------------------------------------------------------------------ public pieces (benchmarks, tests)
    def attach(self, net: TokenNetwork) -> None:
        """Drive ``net`` directly, outside a sampling run (per-forward benchmarks): resets all state."""
        self._reset_state()
        self._net = net

    def refresh(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Full forward of the attached network that stores every token's keys, values and residuals."""
        h0 = self._net.embed_tokens(y, t)
        h, _ = self._full_rows(h0, None, False)
        self._h0_ref = h0.clone()
        return self._net.readout(h)

    def partial_forward(self, y: torch.Tensor, t: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Forward recomputing only tokens ``selected`` ``(B, L)``, reusing the cached keys/residuals of
        the others."""
        h0 = self._net.embed_tokens(y, t)
        return self._partial_rows(h0, selected, None)[0]

    # ------------------------------------------------------------------ full forward (stores caches)
    def _full_rows(self, h0: torch.Tensor, rows: torch.Tensor | None, measure: bool,
                   ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full forward of batch rows ``rows`` (all when None) from their input tokens ``h0``; stores K/V
        and residuals of every token of those rows. Returns the last hidden state and, when ``measure``,
        the hidden state a reuse of the cached residuals (forecast with ``ratio`` when given) would have
        produced (before overwriting)."""
        linear = self.forecast == "linear"
        acc = torch.zeros_like(h0) if measure else None
        h = h0
        new_layers: list[LayerCache] = []
        for i, layer in enumerate(self._net.layers):
            q, k, v = layer.project_qkv(h)
            out = layer.compose(h, layer.attend(q, k, v))
            d = out - h
            if self._layers is not None:
                lc = self._layers[i]
                if measure:
                    acc += self._forecast(lc, ratio) if rows is None else lc.d.index_select(0, rows)
                if linear:
                    if lc.d_prev is None or rows is None:
                        lc.d_prev = lc.d.clone()
                    else:
                        lc.d_prev.index_copy_(0, rows, lc.d.index_select(0, rows))
                if rows is None:
                    lc.k, lc.v, lc.d = _merge_heads(k), _merge_heads(v), d
                else:
                    lc.k.index_copy_(0, rows, _merge_heads(k))
                    lc.v.index_copy_(0, rows, _merge_heads(v))
                    lc.d.index_copy_(0, rows, d)
            else:
                new_layers.append(LayerCache(_merge_heads(k), _merge_heads(v), d))
            h = out
        if self._layers is None:
            self._layers = new_layers
        return h, (h0 + acc if measure else None)

    # ------------------------------------------------------------------ forecasting reused residuals
    @staticmethod
    def _forecast(lc: LayerCache, ratio: torch.Tensor | None) -> torch.Tensor:
        """A layer's residuals as a reuse sees them: held, or extrapolated by ``ratio`` ``(B, L)``."""
        if ratio is None or lc.d_prev is None:
            return lc.d
        return lc.d + (lc.d - lc.d_prev) * ratio.unsqueeze(-1)

    def _ratio(self, t: torch.Tensor, batch: int, length: int) -> torch.Tensor | None:
        """Per token, how far (in units of its last interval) a linear forecast reaches at time ``t``."""
        if self.forecast == "hold" or self._t_ref is None:
            return None
        return self.forecast_ratio(t.reshape(-1).expand(batch)[:, None].to(torch.float32), self._t_ref, self._t_prev)

    def _times(self, fresh: torch.Tensor | None, t: torch.Tensor, batch: int, length: int) -> None:
        """Tokens ``fresh`` ``(B, L)`` (all when None) were recomputed at time ``t``: shift their times."""
        if self.forecast == "hold":
            return
        tb = t.reshape(-1).expand(batch)[:, None].to(torch.float32).expand(batch, length)
        if self._t_ref is None:
            self._t_ref, self._t_prev = tb.clone(), torch.full_like(tb, float("nan"))
        elif fresh is None:
            self._t_prev, self._t_ref = self._t_ref, tb.clone()
        else:
            self._t_prev = torch.where(fresh, self._t_ref, self._t_prev)
            self._t_ref = torch.where(fresh, tb, self._t_ref)

    # ------------------------------------------------------------------ one evaluation
    def _network(self, y: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        net, step, pricer = self._net, self._step, self.pricer
        h0 = net.embed_tokens(y, tt)
        batch, length, _ = h0.shape
        n_layers = len(net.layers)
        first = self._layers is None
        ratio = self._ratio(tt, batch, length)
        if first or self._is_refresh(step):
            measure = (not first) and self._adapt(step)
            u = pricer.intensity(h0, self._h0_ref) if measure else None
            h, h_reuse = self._full_rows(h0, None, measure, ratio)
            self._times(None, tt, batch, length)
            out = net.readout(h)
            if first:
                pricer.mult = torch.ones(batch, length, device=h0.device)
                pricer.kappa = torch.ones(batch, device=h0.device)
            if measure:
                pricer.measure(u, net.readout(h_reuse), out, calibrate=step == 1)
            self._h0_ref = h0.clone()
            pricer.F_ref = out
            self._acc = torch.zeros(batch, length, device=h0.device)
            self._count(full=True, layers=n_layers, length=length, batch=batch, computed=batch * length)
            self._bytes()
            return out

        sel, full, g = self._select(y, h0)
        n_full = int(full.sum())  # host sync (and two more in _partial_rows to size the gathered rows)
        out = torch.empty(y.shape, device=y.device, dtype=y.dtype)
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
            if ratio is not None:
                ratio = ratio.masked_fill(full[:, None], 0.0)
            extra["sample_full_recomputes"] = extra.get("sample_full_recomputes", 0) + n_full
        if n_full < batch:
            rows = None if n_full == 0 else (~full).nonzero().squeeze(1)
            pick = (lambda v: v) if rows is None else (lambda v: v.index_select(0, rows))
            res, n_computed = self._partial_rows(pick(h0), pick(sel), rows, ratio)
            if rows is None:
                out = res
            else:
                out.index_copy_(0, rows, res)
            computed += n_computed
        fresh = sel | full[:, None]
        self._times(fresh, tt, batch, length)
        if g is not None:
            self._acc = torch.where(fresh, torch.zeros_like(g), self._acc + g)
        pricer.F_ref = out
        self._count(full=n_full == batch, layers=n_layers, length=length, batch=batch, computed=computed)
        return out

    def forced_mask(self, length: int, device: torch.device) -> torch.Tensor:
        """The ``K`` lowest-frequency tokens (order of :func:`tsdiff.diffusion.fourier.frequency_index`);
        none in the time domain, where tokens have no frequency order."""
        if self._forced is None:
            forced = torch.zeros(length, dtype=torch.bool, device=device)
            frequency = self._iface is not None and self._iface.frequency_domain
            k = min(self.K, length) if frequency else 0
            if k:
                from tsdiff.diffusion.fourier import frequency_index

                # a patch token's frequency is its lowest component's (positions are padded at the end)
                p = self.pricer.patch if self.pricer is not None else 1
                freq = frequency_index(self._iface.length).float()
                freq = torch.nn.functional.pad(freq, (0, length * p - freq.numel()), value=float("inf"))
                order = torch.sort(freq.view(length, p).amin(1), stable=True).indices[:k]
                forced[order.to(device)] = True
            self._forced = forced
            self._stats.extra["K_effective"] = int(k)
        return self._forced

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
        sel = self.forced_mask(length, device).expand(batch, length).clone()
        n_probe = int(round(self.random_probe_ratio * length))
        if n_probe:
            pos = torch.rand(length, generator=gen, device=device).topk(n_probe).indices
            sel[:, pos] = True
        full = no_full
        g = None
        if self.event_trigger and self.selection == "event":
            pricer = self.pricer
            g = pricer.harm(pricer.intensity(h0, self._h0_ref))
            w = pricer.energy_weights(y)
            intensity = (self._acc + g) / w  # in units of the sample's rms (data std units without energy weighting)
            sel |= intensity > self.tau_0
            full = pricer.rms(intensity) > self.tau_warn
        full = full | (sel.sum(1) > self.full_fraction * length)
        if self.batch_sync:
            full = full.any().expand(batch)
        return sel, full, g

    def _partial_rows(self, h0: torch.Tensor, sel: torch.Tensor, rows: torch.Tensor | None,
                      ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Recompute the selected tokens ``sel`` ``(b, L)`` of batch rows ``rows`` (all when None; ``h0``
        and ``sel`` hold those rows) in every layer, against all keys; the others advance by their cached
        residuals (forecast by ``ratio`` ``(B, L)`` when given). Returns the output and the number of
        recomputed token slots.

        Cost: the selected tokens of all samples are one flat list (no padding to the largest selection)
        for the projections and the feed-forward, and caches are read and written through flat row
        indices (``index_select`` / ``index_copy_``) instead of expanded-index gathers. Only the queries
        are padded per sample for the attention call (zero queries, discarded)."""
        net = self._net
        b, length, dm = h0.shape
        batch = self._layers[0].d.shape[0]
        if ratio is not None:
            ratio = ratio if rows is None else ratio.index_select(0, rows)
            ratio = ratio.masked_fill(sel, 0.0).unsqueeze(-1)  # recomputed tokens use their fresh residual
        nz = sel.nonzero()  # (N, 2): sample, token
        n_sel = nz.shape[0]
        n_max = max(int(sel.sum(1).max()), 1)
        local = nz[:, 0] * length + nz[:, 1]  # rows of h.view(b * L, d)
        glob = local if rows is None else rows.index_select(0, nz[:, 0]) * length + nz[:, 1]  # rows of the caches
        slot = (sel.cumsum(1) - 1)[nz[:, 0], nz[:, 1]]
        padded = nz[:, 0] * n_max + slot  # rows of the per-sample padded query block (b * n_max, d)
        self._selected = n_sel * len(net.layers) + (self._selected or 0)
        pick = (lambda v: v) if rows is None else (lambda v: v.index_select(0, rows))
        h = h0
        for lc, layer in zip(self._layers, net.layers):
            hs = h.reshape(b * length, dm).index_select(0, local)  # (N, d)
            q, k, v = layer.project_qkv(hs[None])  # (1, H, N, d_head)
            heads = q.shape[1]
            lc.k.view(batch * length, dm).index_copy_(0, glob, _merge_heads(k)[0])
            lc.v.view(batch * length, dm).index_copy_(0, glob, _merge_heads(v)[0])
            q_pad = h0.new_zeros(b * n_max, dm).index_copy_(0, padded, _merge_heads(q)[0])
            attn = layer.attend(_split_heads(q_pad.view(b, n_max, dm), heads), _split_heads(pick(lc.k), heads),
                                _split_heads(pick(lc.v), heads))
            attn = attn.reshape(b * n_max, dm).index_select(0, padded)
            d_new = layer.compose(hs[None], attn[None])[0] - hs
            d_flat = lc.d.view(batch * length, dm)
            if lc.d_prev is not None:
                lc.d_prev.view(batch * length, dm).index_copy_(0, glob, d_flat.index_select(0, glob))
            d_flat.index_copy_(0, glob, d_new)
            dc = pick(lc.d)
            h = h + (dc if ratio is None or lc.d_prev is None else dc + (dc - pick(lc.d_prev)) * ratio)
        # the recomputed tokens' reference input is now the current one
        self._h0_ref.view(batch * length, dm).index_copy_(0, glob, h0.reshape(b * length, dm).index_select(0, local))
        return net.readout(h), n_sel


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(b, H, n, d_head) -> (b, n, H * d_head)`` (the cache layout: one row per token)."""
    b, heads, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * dh)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, n, H * d_head) -> (b, H, n, d_head)`` (a view)."""
    b, n, dm = x.shape
    return x.view(b, n, heads, dm // heads).transpose(1, 2)
