"""Contrastive training of TS2Vec encoders, the feature map of Context-FID.

The encoder network is :class:`tsdiff.nets.ts2vec.TS2VecEncoder` (TS2Vec: Yue et al., AAAI 2022). Its
training here follows TS2Vec:

* random *timestamp masking* of the projected input (each step kept with probability 1/2);
* a *hierarchical contrastive loss*: two overlapping random crops of the same series are encoded; on
  their common part the representation of a step must be closer to its twin in the other view than to
  (a) the other series of the batch at that step (instance term) and (b) the other steps of the same
  series (temporal term); both terms are applied again after each max-pooling by 2 along time.

Context-FID (Jeha et al., "PSA-GAN", ICLR 2022) uses such an encoder, trained on the real data, in place of
the Inception network of image FID, because a feature map that knows temporal context scores generated
*sequences* rather than unordered values. Settings mirror the TS2Vec defaults Diffusion-TS uses: width 64,
depth 10, output 320, batch 8, AdamW with lr 1e-3, encoding with an equal-weight running average of the
weights (stochastic weight averaging), 200 iterations (600 when the training set holds more than 100,000
numbers).

Speed: on CPU, TS2Vec's cost is per-operation overhead, not arithmetic, so ``R`` independent encoders (one
per evaluation run) are trained side by side in the same tensor operations
(:class:`StackedTS2VecEncoder`: the parameters of ``R`` single encoders stacked along a model axis), each
with its own initialisation, batches, crop offsets, masks and dropout; they share only the crop *lengths*
drawn at each iteration (so one forward pass serves all runs). :meth:`StackedTS2VecEncoder.encoder`
returns run ``r`` as a stand-alone :class:`~tsdiff.nets.ts2vec.TS2VecEncoder`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tsdiff.nets.ts2vec import TS2VecEncoder, ts2vec_forward


class StackedTS2VecEncoder(nn.Module):
    """``R`` independent TS2Vec encoders evaluated together.

    Input ``(R, B, T, C)``, output ``(R, B, T, output_dims)``. Model ``r`` starts as
    ``TS2VecEncoder(..., seed=seeds[r])``; its parameters are slice ``r`` of the stacked ones.
    """

    def __init__(self, input_dims: int, seeds: list[int], output_dims: int = 320, hidden_dims: int = 64,
                 depth: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_models = len(seeds)
        self._config = dict(input_dims=input_dims, output_dims=output_dims, hidden_dims=hidden_dims, depth=depth,
                            dropout=dropout)
        singles = [TS2VecEncoder(seed=int(s), **self._config) for s in seeds]
        self.dilations = singles[0].dilations
        self.dropout = dropout
        self.params = nn.ParameterList(
            [nn.Parameter(torch.stack([m.params[i].detach() for m in singles])) for i in range(len(singles[0].params))]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return ts2vec_forward(list(self.params), self.dilations, x, mask, self.dropout, self.training)

    def encoder(self, r: int) -> TS2VecEncoder:
        """Model ``r`` as a stand-alone encoder (a copy of its current weights, in eval mode)."""
        enc = TS2VecEncoder(**self._config)
        with torch.no_grad():
            for p, q in zip(enc.params, self.params):
                p.copy_(q[r])
        return enc.eval().to(self.params[0].device)


def _contrast(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """InfoNCE over axis -2 of ``(G, K, D)`` views: item k of view 1 must pick item k of view 2.

    For each group the 2K items of both views are compared by dot product; an item's positive is its twin
    in the other view and its negatives are the other 2K - 2 items (itself excluded).
    """
    k = z1.shape[-2]
    if k == 1:
        return z1.new_zeros(())
    z = torch.cat([z1, z2], dim=-2)
    sim = z @ z.transpose(-1, -2)
    eye = torch.eye(2 * k, dtype=torch.bool, device=z.device)
    logp = F.log_softmax(sim.masked_fill(eye, float("-inf")), dim=-1)
    target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(z.device)
    return -logp.gather(-1, target.expand(*sim.shape[:-1]).unsqueeze(-1)).mean()


def hierarchical_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """TS2Vec's loss for two aligned views ``(R, B, T, D)``, summed over the ``R`` models.

    Instance term: per model and step, contrast across the batch; temporal term: per model and series,
    contrast across steps; repeated after each max-pool by 2 in time, averaged over the levels.
    """
    r = z1.shape[0]
    loss = z1.new_zeros(())
    levels = 0

    def pool(z):
        rr, b, t, d = z.shape
        return F.max_pool1d(z.reshape(rr * b, t, d).transpose(1, 2), 2).transpose(1, 2).reshape(rr, b, -1, d)

    while z1.shape[2] > 1:
        loss = loss + alpha * _contrast(z1.transpose(1, 2).flatten(0, 1), z2.transpose(1, 2).flatten(0, 1))
        loss = loss + (1 - alpha) * _contrast(z1.flatten(0, 1), z2.flatten(0, 1))
        levels += 1
        z1, z2 = pool(z1), pool(z2)
    if z1.shape[2] == 1:
        loss = loss + alpha * _contrast(z1.transpose(1, 2).flatten(0, 1), z2.transpose(1, 2).flatten(0, 1))
        levels += 1
    return loss / levels * r  # means over R models -> sum, so each model's gradient is its own loss's


def default_ts2vec_iterations(data_size: int) -> int:
    """TS2Vec's own default: 200 iterations, or 600 for training sets of more than 100,000 numbers."""
    return 200 if data_size <= 100_000 else 600


def train_ts2vec(
    data: torch.Tensor,
    iterations: int,
    seeds: list[int],
    batch_size: int = 8,
    lr: float = 1e-3,
    output_dims: int = 320,
    hidden_dims: int = 64,
    depth: int = 10,
) -> StackedTS2VecEncoder:
    """Train ``len(seeds)`` TS2Vec encoders on ``data`` ``(N, T, C)``; return their weight averages (eval mode).

    Per iteration: one crop geometry (TS2Vec's overlapping crops: a common segment of length ``crop_l`` and
    extended views on both sides) shared by all models; per model a batch of ``batch_size`` series, a random
    offset per series, and Bernoulli(1/2) timestamp masks for both views. Call inside
    :func:`~tsdiff.metrics._checks.seeded_torch` so dropout is reproducible.
    """
    n, t, c = data.shape
    device = data.device
    r = len(seeds)
    rngs = [np.random.default_rng(s) for s in seeds]
    geo = np.random.default_rng([int(s) for s in seeds] + [7919])
    gen = torch.Generator().manual_seed(int(seeds[0]) * 1_000_003 + r)
    enc = StackedTS2VecEncoder(c, seeds, output_dims, hidden_dims, depth).to(device)
    avg = [p.detach().clone() for p in enc.parameters()]
    opt = torch.optim.AdamW(enc.parameters(), lr=lr)
    enc.train()
    bs = min(batch_size, n)
    orders = [g.permutation(n) for g in rngs]
    pos = 0
    for it in range(iterations):
        if pos + bs > n:
            orders, pos = [g.permutation(n) for g in rngs], 0
        crop_l = int(geo.integers(2, t + 1))
        left = int(geo.integers(0, t - crop_l + 1))
        right = left + crop_l
        eleft = int(geo.integers(0, left + 1))
        eright = int(geo.integers(right, t + 1))
        idx_b = np.stack([o[pos : pos + bs] for o in orders])  # (R, bs)
        offset = np.stack([g.integers(-eleft, t - eright + 1, size=bs) for g in rngs])[..., None]
        pos += bs
        t1 = offset + np.arange(eleft, right)  # (R, bs, len1)
        t2 = offset + np.arange(left, eright)
        b_idx = torch.as_tensor(idx_b[..., None], device=device)
        v1 = data[b_idx, torch.as_tensor(t1, device=device)]  # (R, bs, len1, C)
        v2 = data[b_idx, torch.as_tensor(t2, device=device)]
        m1 = (torch.rand(v1.shape[:3], generator=gen) < 0.5).to(device)
        m2 = (torch.rand(v2.shape[:3], generator=gen) < 0.5).to(device)
        z1 = enc(v1, m1)[:, :, -crop_l:]
        z2 = enc(v2, m2)[:, :, :crop_l]
        loss = hierarchical_contrastive_loss(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # equal-weight running mean of the weights (SWA)
            torch._foreach_lerp_(avg, [p.detach() for p in enc.parameters()], 1.0 / (it + 1))
    with torch.no_grad():
        for p, a in zip(enc.parameters(), avg):
            p.copy_(a)
    enc.eval()
    return enc


@torch.no_grad()
def encode_full_series(model: StackedTS2VecEncoder, data: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Embeddings ``(R, N, D)``: each model's per-step representations max-pooled over the whole window."""
    out = []
    r = model.num_models
    for i in range(0, data.shape[0], batch_size):
        x = data[i : i + batch_size]
        out.append(model(x.unsqueeze(0).expand(r, -1, -1, -1)).amax(dim=2))
    return torch.cat(out, dim=1)
