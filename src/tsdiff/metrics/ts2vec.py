"""A TS2Vec-style encoder and its contrastive training, used as the feature map of Context-FID.

TS2Vec (Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022) learns a
per-time-step representation with

* a linear input projection, random *timestamp masking* of the projected input during training
  (each step kept with probability 1/2),
* a stack of residual blocks of two dilated 1-D convolutions (kernel 3, dilation 2**i, GELU before each
  convolution, a 1x1 projection on the residual path when the width changes), ending in 320 channels,
* a *hierarchical contrastive loss*: two overlapping random crops of the same series are encoded; on
  their common part, the representation of a step must be closer to its twin in the other view than to
  (a) the other series of the batch at that step (instance loss) and (b) the other steps of the same
  series (temporal loss); both terms are applied again after each max-pooling by 2 along time.

Context-FID (Jeha et al., "PSA-GAN", ICLR 2022) replaces the image-FID Inception network with such an
encoder trained on the real data, because a feature map that knows the temporal context scores
generated *sequences* rather than unordered values. The settings mirror TS2Vec's defaults used by
Diffusion-TS: width 64, depth 10, output 320, batch 8, AdamW lr 1e-3, an equal-weight running average of
the weights (stochastic weight averaging) used for encoding, and 200 iterations (600 when the training set
holds more than 100,000 numbers).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _DilatedBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int, project: bool) -> None:
        super().__init__()
        # kernel 3 with padding = dilation keeps the length ("same" convolution).
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Conv1d(c_in, c_out, 1) if (project or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x if self.skip is None else self.skip(x)
        x = self.conv2(F.gelu(self.conv1(F.gelu(x))))
        return x + res


class TS2VecEncoder(nn.Module):
    """Maps ``(batch, length, channels)`` to per-step representations ``(batch, length, output_dims)``."""

    def __init__(self, input_dims: int, output_dims: int = 320, hidden_dims: int = 64, depth: int = 10,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.input_fc = nn.Linear(input_dims, hidden_dims)
        widths = [hidden_dims] * depth + [output_dims]
        blocks = []
        c_in = hidden_dims
        for i, c_out in enumerate(widths):
            blocks.append(_DilatedBlock(c_in, c_out, dilation=2**i, project=(i == len(widths) - 1)))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input_fc(x)
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        h = self.blocks(h.transpose(1, 2))
        return self.dropout(h).transpose(1, 2)


def _contrast(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """InfoNCE over the middle axis: ``z`` is ``(G, K, D)``; item k of view 1 must pick item k of view 2.

    For each group g the 2K items of both views are compared by dot product; each item's positive is its
    twin in the other view and its negatives are the other 2K - 2 items (itself excluded).
    """
    k = z1.shape[1]
    if k == 1:
        return z1.new_zeros(())
    z = torch.cat([z1, z2], dim=1)  # (G, 2K, D)
    sim = z @ z.transpose(1, 2)
    eye = torch.eye(2 * k, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(z.device)
    logp = F.log_softmax(sim, dim=-1)
    return -logp.gather(-1, target.expand(sim.shape[0], -1).unsqueeze(-1)).mean()


def hierarchical_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """TS2Vec's loss on two aligned views ``(B, T, D)``: instance + temporal InfoNCE at every time scale."""
    loss = z1.new_zeros(())
    levels = 0
    while z1.shape[1] > 1:
        loss = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1))  # instance: per step, across batch
        loss = loss + (1 - alpha) * _contrast(z1, z2)  # temporal: per series, across steps
        levels += 1
        z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
    if z1.shape[1] == 1:
        loss = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1))
        levels += 1
    return loss / levels


def default_ts2vec_iterations(data_size: int) -> int:
    """TS2Vec's own default: 200 iterations, or 600 for training sets of more than 100,000 numbers."""
    return 200 if data_size <= 100_000 else 600


def train_ts2vec(
    data: torch.Tensor,
    iterations: int,
    seed: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    output_dims: int = 320,
    hidden_dims: int = 64,
    depth: int = 10,
) -> nn.Module:
    """Train a :class:`TS2VecEncoder` on ``data`` ``(N, T, C)`` and return its weight-averaged copy (eval mode).

    Each iteration draws a batch, one crop geometry for the batch and a random offset per series (TS2Vec's
    overlapping crops), masks timestamps of both views, and minimises the hierarchical contrastive loss on the
    overlap. All randomness comes from ``seed`` (a NumPy generator for crops and batches, a torch generator
    for masks, and a forked global torch state for weight initialisation and dropout).
    """
    n, t, c = data.shape
    device = data.device
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    enc = TS2VecEncoder(c, output_dims, hidden_dims, depth).to(device)
    avg = torch.optim.swa_utils.AveragedModel(enc)
    opt = torch.optim.AdamW(enc.parameters(), lr=lr)
    enc.train()
    order = rng.permutation(n)
    pos = 0
    bs = min(batch_size, n)
    for _ in range(iterations):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        x = data[torch.as_tensor(order[pos : pos + bs], device=device)]
        pos += bs
        crop_l = int(rng.integers(2, t + 1))
        left = int(rng.integers(0, t - crop_l + 1))
        right = left + crop_l
        eleft = int(rng.integers(0, left + 1))
        eright = int(rng.integers(right, t + 1))
        offset = rng.integers(-eleft, t - eright + 1, size=bs)
        idx1 = torch.as_tensor(offset[:, None] + np.arange(eleft, right)[None], device=device)
        idx2 = torch.as_tensor(offset[:, None] + np.arange(left, eright)[None], device=device)
        rows = torch.arange(bs, device=device)[:, None]
        v1, v2 = x[rows, idx1], x[rows, idx2]
        m1 = (torch.rand(v1.shape[:2], generator=gen) < 0.5).to(device)
        m2 = (torch.rand(v2.shape[:2], generator=gen) < 0.5).to(device)
        z1 = enc(v1, m1)[:, -crop_l:]
        z2 = enc(v2, m2)[:, :crop_l]
        loss = hierarchical_contrastive_loss(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        avg.update_parameters(enc)
    model = avg.module
    model.eval()
    return model


@torch.no_grad()
def encode_full_series(model: nn.Module, data: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """One vector per window: the per-step representations max-pooled over the whole window ``(N, D)``."""
    out = [model(data[i : i + batch_size]).amax(dim=1) for i in range(0, data.shape[0], batch_size)]
    return torch.cat(out)
