"""TS2Vec's dilated-convolution encoder as a plain ``nn.Module`` (no Lightning, no training loop).

TS2Vec (Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022, Sec. 3.1) maps a
series ``(T, C)`` to one representation per time step ``(T, D)``:

* a linear input projection ``C -> hidden`` (during training its output is multiplied by a random
  *timestamp mask*; the mask is an argument of :meth:`TS2VecEncoder.forward`, drawn by the trainer);
* ``depth + 1`` residual blocks, each two kernel-3 dilated 1-D convolutions with a GELU before each,
  dilation ``2**i`` in block ``i``; the last block widens to ``output_dims`` (320) and takes a 1x1
  projection on its residual path;
* dropout (0.1) on the output.

The contrastive training (hierarchical loss, crops, weight averaging) lives with its user,
:mod:`tsdiff.metrics.ts2vec`, which trains several encoders side by side for Context-FID.

Two CPU-oriented choices that do not change the function computed:

* a convolution is one matrix product over three shifted copies of the input (weights stored as
  ``(out, 3 * in)``, taps left / centre / right), and when the dilation reaches past the window the outer
  taps (which only see zero padding) are skipped;
* :func:`ts2vec_forward` accepts parameters with a leading *model axis* ``R``, so that ``R`` independent
  encoders can be evaluated in the same tensor operations; :class:`TS2VecEncoder` is the ``R = 1`` case.

Initialisation follows PyTorch's default layer rule ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn in a fixed
order from ``torch.Generator().manual_seed(seed)``, so an encoder is a deterministic function of its seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def ts2vec_layout(input_dims: int, output_dims: int, hidden_dims: int, depth: int):
    """Parameter shapes and fan-ins in drawing order, plus the dilations of the blocks.

    Order: input weight, input bias, then per block (conv 1 weight, conv 1 bias, conv 2 weight, conv 2 bias),
    then the residual projection's weight and bias.
    """
    shapes = [((hidden_dims, input_dims), input_dims), ((hidden_dims, 1), input_dims)]
    widths = [hidden_dims] * depth + [output_dims]
    c_in = hidden_dims
    for c_out in widths:
        for cin in (c_in, c_out):
            shapes += [((c_out, 3 * cin), 3 * cin), ((c_out, 1), 3 * cin)]
        c_in = c_out
    shapes += [((output_dims, hidden_dims), hidden_dims), ((output_dims, 1), hidden_dims)]
    return shapes, [2**i for i in range(depth + 1)]


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    """Kernel-3 "same" dilated convolution of ``x`` ``(R, B, Cin, T)`` with ``w`` ``(R, Cout, 3 Cin)``."""
    t, cin = x.shape[-1], x.shape[-2]
    if d >= t:  # the outer taps see only zero padding
        return w[:, None, :, cin : 2 * cin] @ x + b[:, None]
    xp = F.pad(x, (d, d))
    cols = torch.cat([xp[..., :t], xp[..., d : d + t], xp[..., 2 * d : 2 * d + t]], dim=-2)
    return w[:, None] @ cols + b[:, None]


def ts2vec_forward(
    params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Encode ``x`` ``(R, B, T, C)`` with ``R`` encoders whose parameters carry a leading model axis.

    ``params`` follow :func:`ts2vec_layout`'s order; ``mask`` ``(R, B, T)`` (True = keep) zeroes projected
    steps (TS2Vec's timestamp masking). Returns ``(R, B, T, output_dims)``.
    """
    in_w, in_b, skip_w, skip_b = params[0], params[1], params[-2], params[-1]
    convs = params[2:-2]
    h = in_w[:, None] @ x.transpose(-1, -2) + in_b[:, None]  # (R, B, H, T)
    if mask is not None:
        h = h * mask[:, :, None, :].to(h.dtype)
    last = len(dilations) - 1
    for i, d in enumerate(dilations):
        res = h if i < last else skip_w[:, None] @ h + skip_b[:, None]
        h = _conv(F.gelu(h), convs[4 * i], convs[4 * i + 1], d)
        h = _conv(F.gelu(h), convs[4 * i + 2], convs[4 * i + 3], d) + res
    h = F.dropout(h, dropout, training)
    return h.transpose(-1, -2)


class TS2VecEncoder(nn.Module):
    """One TS2Vec encoder: ``(B, T, input_dims) -> (B, T, output_dims)``; defaults are TS2Vec's (64, 10, 320)."""

    def __init__(self, input_dims: int, output_dims: int = 320, hidden_dims: int = 64, depth: int = 10,
                 dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        for name, v in (("input_dims", input_dims), ("output_dims", output_dims), ("hidden_dims", hidden_dims)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1; got {v}.")
        if int(depth) < 0:
            raise ValueError(f"depth must be >= 0; got {depth}.")
        self.input_dims, self.output_dims, self.hidden_dims, self.depth = input_dims, output_dims, hidden_dims, depth
        self.dropout = float(dropout)
        shapes, self.dilations = ts2vec_layout(input_dims, output_dims, hidden_dims, depth)
        gen = torch.Generator().manual_seed(int(seed))
        self.params = nn.ParameterList([nn.Parameter(_uniform(gen, s, fan)) for s, fan in shapes])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.input_dims:
            raise ValueError(f"expected input (batch, length, {self.input_dims}); got {tuple(x.shape)}.")
        out = ts2vec_forward([p[None] for p in self.params], self.dilations, x[None],
                             None if mask is None else mask[None], self.dropout, self.training)
        return out[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-window representation ``(B, output_dims)``: per-step outputs max-pooled over time."""
        return self(x).amax(dim=1)
