"""Sampling past one process: ``num_samples`` split into seeded shards, spread over ranks, gathered once.

``cmd/sample.py shard_size=K`` draws the samples in shards of ``K`` (the last one smaller); shard ``i`` is
sampled on its own with the seed ``shard_seed(seed, i)`` (numpy's ``SeedSequence([seed, i])``: independent
streams, derived from the run seed only). Which process samples a shard does not matter, so

* under ``torchrun --nproc_per_node=N cmd/sample.py ...`` (or any launcher that sets ``RANK`` /
  ``WORLD_SIZE`` / ``MASTER_ADDR``: SLURM through torchrun), rank ``r`` samples shards ``r, r + N, ...``;
  rank 0 gathers them in shard order and alone evaluates and writes ``samples.npy`` (exactly
  ``num_samples`` windows, each shard once);
* the result is identical, bit for bit on the same hardware, to a single process run with the same
  ``seed`` and ``shard_size`` -- that is the contract the multi-process test checks.

Without ``shard_size`` a single process keeps the one-stream sampling of :class:`DiffusionSampler`
(one generator for all chunks, what every measured number in the README used); a distributed launch
without ``shard_size`` uses ``shard_size = sample_batch_size``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

__all__ = ["DistContext", "dist_context", "shard_seed", "shards_of", "sample_in_shards"]


class DistContext:
    """Rank and world size of this process (1 process: rank 0 of 1), with the process group it opened."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank, self.owns_group = rank, world_size, local_rank, owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def dist_context(device: torch.device) -> DistContext:
    """The launcher's rank variables; joins (opens) the process group when there is more than one process:
    gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistContext()
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun (see docs/scaling.md)")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return DistContext(rank, world, local, owns)


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: a 63-bit value of ``SeedSequence([seed, shard])`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def shards_of(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every shard, in order."""
    if int(shard_size) < 1:
        raise ValueError(f"shard_size={shard_size} must be a positive integer (or null for one stream in one process)")
    return [(lo, min(lo + int(shard_size), num_samples)) for lo in range(0, num_samples, int(shard_size))]


def sample_in_shards(sampler, num_samples: int, steps: int, seed: int, shard_size: int, ctx: DistContext):
    """This rank's shards, sampled and gathered: ``(samples, stats)`` on rank 0 (all ``num_samples``, shard
    order; stats summed over ranks, wall time of the slowest), ``(None, None)`` on the others."""
    parts, stats = {}, []
    for i, (lo, hi) in enumerate(shards_of(num_samples, shard_size)):
        if i % ctx.world_size == ctx.rank:
            x, st = sampler.sample(hi - lo, steps, seed=shard_seed(seed, i), return_stats=True)
            parts[i] = x.float().cpu()
            stats.append(st)
    local = {"parts": parts, "nfe": sum(s.network_evaluations for s in stats), "wall": sum(s.wall_time_s for s in stats),
             "stats": stats[0] if stats else None, "rank": ctx.rank}
    if ctx.world_size > 1:
        gathered: list[Any] = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, local)  # small: the samples of one command, once
        # every rank passes this point only when the gather is complete on all of them, so the group can be torn
        # down at once on every rank (a rank that tore it down while a peer still had the gather in flight
        # aborted with gloo: "terminate called without an active exception", seen in CI)
        torch.distributed.barrier()
    else:
        gathered = [local]
    if not ctx.is_main:
        return None, None
    merged = {i: x for g in gathered for i, x in g["parts"].items()}
    n_shards = len(shards_of(num_samples, shard_size))
    if sorted(merged) != list(range(n_shards)):
        raise RuntimeError(f"gathered shards {sorted(merged)} but expected 0..{n_shards - 1}; a rank failed to sample its part")
    samples = torch.cat([merged[i] for i in range(n_shards)], dim=0)
    if len(samples) != num_samples:
        raise RuntimeError(f"gathered {len(samples)} samples instead of num_samples={num_samples}")
    first = next(g["stats"] for g in gathered if g["stats"] is not None)
    total = replace(first, num_samples=num_samples, network_evaluations=sum(g["nfe"] for g in gathered),
                    wall_time_s=max(g["wall"] for g in gathered))
    return samples, total
