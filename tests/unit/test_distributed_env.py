"""Which process owns the files of a distributed run, and how sampling is cut into seeded shards."""

import pytest

from tsdiff.tasks.common import is_global_zero
from tsdiff.tasks.sharding import shard_seed, shards_of

RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


@pytest.mark.parametrize("env, owner", [
    ({}, True),                                    # one plain process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),      # torchrun / Lightning rank 0
    ({"RANK": "1", "LOCAL_RANK": "1"}, False),
    ({"RANK": "0", "SLURM_PROCID": "3"}, True),    # torchrun inside a SLURM job: RANK decides
    ({"SLURM_PROCID": "0"}, True),                 # srun task 0 (Lightning's SLURM environment, no RANK)
    ({"SLURM_PROCID": "5"}, False),                # another srun task: must not write the run folder
    ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # a device process Lightning spawned inside a SLURM job
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
])
def test_only_the_global_rank_zero_process_owns_the_files(monkeypatch, env, owner):
    for key in RANK_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_global_zero() is owner


def test_shards_cover_every_sample_once_with_seeds_derived_from_the_run_seed():
    assert shards_of(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    seeds = [shard_seed(7, i) for i in range(4)]
    assert len(set(seeds)) == 4 and seeds == [shard_seed(7, i) for i in range(4)] and shard_seed(8, 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="shard_size=0 must be a positive integer"):
        shards_of(10, 0)
