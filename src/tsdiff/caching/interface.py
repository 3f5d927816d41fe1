"""What a model may declare so that a cache policy can reuse its work (the optional part of the model
contract, :mod:`tsdiff.sampling.contract`).

A model offers ``cache_interface() -> CacheInterface | None``. Without it (plain callables, TimeDiff
today) a cache can only reuse the whole denoiser output. With it, the cache gets:

* ``denoise_with(x, t, cond, network)``: the model's own ``denoise`` with ``network`` called in place of
  its network ``F(y, t)``; representation and preconditioning stay in the model, the cache *wraps* the
  network instead of patching an attribute;
* ``network``: the plain ``F(y, t)`` used for inference (the EMA copy when there is one);
* ``tokens``: the same network seen as token blocks (:class:`TokenNetwork`), or ``None`` when the
  backbone has no token structure (LSTM, convolutions): such models get the step path only;
* the pricing inputs: per-component data std, the output sensitivity ``omega(t)`` and whether tokens
  are frequency components (``frequency_domain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class TokenLayer(Protocol):
    """One residual block over tokens ``(batch, tokens, width)``, split where a token cache needs it."""

    def project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``(batch, heads, tokens, d_head)`` of the layer input ``h``."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The attention branch of queries ``q`` against keys/values ``k, v``: ``(batch, n_q, width)``."""

    def compose(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The layer output from its input ``h`` and attention branch ``attn`` (its residual composition;
        the layer's own ``forward`` uses the same function)."""


@runtime_checkable
class TokenNetwork(Protocol):
    """A network ``F(y, t) = readout(layers(embed_tokens(y, t)))`` whose layers are :class:`TokenLayer`."""

    layers: Sequence[Any]

    def embed_tokens(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def readout(self, h: torch.Tensor) -> torch.Tensor: ...


def as_token_network(net: Any) -> TokenNetwork | None:
    """``net`` if it declares token blocks (all its layers split as :class:`TokenLayer`), else ``None``."""
    if isinstance(net, TokenNetwork) and all(isinstance(layer, TokenLayer) for layer in net.layers):
        return net
    return None


@dataclass(frozen=True)
class CacheInterface:
    """The pieces of a model a cache may use (see the module docstring). Shapes: ``data_std`` and
    ``output_sensitivity(t, ndim, alpha_sigma=...)`` are per component ``(length, channels)`` (the
    latter with a leading batch dimension)."""

    denoise_with: Callable[[torch.Tensor, torch.Tensor, Any, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], torch.Tensor]
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    length: int
    tokens: TokenNetwork | None = None
    data_std: torch.Tensor | None = None
    output_sensitivity: Callable[..., torch.Tensor] | None = None
    frequency_domain: bool = False
