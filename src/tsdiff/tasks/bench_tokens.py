"""Per-forward costs behind the cache benchmark: what one network evaluation costs in full, on the token
path recomputing a fraction of the tokens, and on a reused step (embedding and read-out only).

:func:`forward_costs` times the run's own network (its tokens, patches and width); :func:`token_scaling`
times random-weight networks of the same width at other token counts (weights do not change the cost),
which says at what length and batch the token path pays. Both interleave their timings.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tsdiff.tasks.bench_common import interleaved_medians


def _token_net(model):
    from tsdiff.sampling.contract import DeclaresCache, declares

    iface = model.cache_interface() if declares(model, DeclaresCache) else None
    return iface.tokens if iface is not None else None


def _time_paths(net, x, t, fractions, repeats: int, seed: int) -> dict[str, dict[str, Any]]:
    from tsdiff.caching import TokenE2CRF

    batch, n_tok = x.shape[0], net.num_tokens
    cache = TokenE2CRF()
    cache.attach(net)  # a bare network: drive the token path directly
    with torch.inference_mode():
        cache.refresh(x, t)
        h0 = net.embed_tokens(x, t)
        fns: dict[str, Callable[[], Any]] = {
            "full": lambda: net(x, t),
            "step_reuse": lambda: net.readout(net.embed_tokens(x, t) + h0),
            "embed+readout": lambda: net.readout(h0),
            "one_layer": lambda: net.layers[0](h0),
        }
        for frac in fractions:
            n = max(1, int(round(frac * n_tok)))
            sel = torch.zeros(batch, n_tok, dtype=torch.bool, device=x.device)
            sel[:, torch.randperm(n_tok, generator=torch.Generator().manual_seed(seed))[:n].to(x.device)] = True
            fns[f"token@{frac}"] = lambda sel=sel: cache.partial_forward(x, t, sel)
        return interleaved_medians(fns, repeats, 1)


def forward_costs(model, device, batches: list[int], fractions: list[float], repeats: int, seed: int) -> list[dict[str, Any]]:
    """Milliseconds per forward of the run's network at each batch size: full, token path at each
    recompute fraction, reused step, embedding + read-out, one layer; speed-ups over the full forward."""
    net = _token_net(model)
    if net is None or not hasattr(net, "num_tokens"):
        return []
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for batch in batches:
        x = torch.randn(batch, *tuple(model.sample_shape), generator=gen, device=device)
        med = _time_paths(net, x, torch.full((batch,), 0.5, device=device), fractions, repeats, seed)
        full = med["full"]["median_s"]
        row = {"batch": int(batch), "tokens": int(net.num_tokens), "patch": int(getattr(net, "patch_size", 1))}
        row.update({f"{k}_ms": 1e3 * v["median_s"] for k, v in med.items()})
        row.update({f"{k}_speedup": full / v["median_s"] for k, v in med.items() if k.startswith(("token@", "step_reuse"))})
        rows.append(row)
    return rows


def token_scaling(model, device, lengths, batches, fractions, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Per-forward speed-up of the token path over a full forward for random-weight transformers shaped
    like ``model``'s (one position per token) at other sequence lengths."""
    from tsdiff.nets.score_nets import TransformerScoreNet

    net0 = _token_net(model)
    if not isinstance(net0, TransformerScoreNet):
        return []
    layer0 = net0.layers[0]
    rows = []
    gen = torch.Generator(device=device).manual_seed(seed)
    for length in lengths:
        torch.manual_seed(seed)
        net = TransformerScoreNet(
            net0.n_channels, int(length), d_model=net0.d_model, num_layers=len(net0.layers),
            num_heads=layer0.num_heads, dim_feedforward=layer0.ff1.out_features,
        ).to(device).eval()
        for batch in batches:
            x = torch.randn(batch, int(length), net0.n_channels, generator=gen, device=device)
            med = _time_paths(net, x, torch.full((batch,), 0.5, device=device), fractions, repeats, seed)
            for frac in fractions:
                rows.append({
                    "length": int(length), "batch": int(batch), "fraction": float(frac),
                    "full_ms": 1e3 * med["full"]["median_s"], "token_ms": 1e3 * med[f"token@{frac}"]["median_s"],
                    "speedup": med["full"]["median_s"] / med[f"token@{frac}"]["median_s"],
                })
    return rows
