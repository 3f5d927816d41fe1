"""Past one process on CPU (gloo): 2-process DDP training against the single-process run, and sampling sharded
over 2 torchrun processes against one process with the same seed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_SCORE, compose_cfg, train_tiny

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "WANDB_MODE": "disabled"}
# same data, model and optimizer; 2 ranks x 16 windows per step = 1 process x 32 windows per step
TRAIN = ["datamodule=synthetic", "datamodule.n_samples=640", "trainer.max_epochs=4", "logger=csv", "trainer.accelerator=cpu",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "score_model.lr_warmup_steps=5",
         "score_model.lr=3e-3", *TINY_SCORE]


def _epoch_losses(run_dir: Path) -> pd.DataFrame:
    (csv,) = run_dir.glob("**/metrics.csv")
    return pd.read_csv(csv).groupby("epoch")[["val/loss"]].max()


@pytest.mark.slow
def test_two_process_ddp_training_matches_the_single_process_run(tmp_path):
    from tsdiff.tasks.train import run

    runs = tmp_path / "runs"
    single = run(compose_cfg("train", [*TRAIN, "datamodule.batch_size=32", f"runs_dir={runs}", "run_id=single"]))
    cmd = [sys.executable, "cmd/train.py", "trainer=ddp", "trainer.devices=2", "datamodule.batch_size=16", *TRAIN,
           f"runs_dir={runs}", "run_id=ddp"]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((runs / "ddp" / "run.json").read_text())
    # the data is sharded: each rank sees half the windows, so an epoch has as many steps as the single run's
    assert info["status"] == "done" and info["world_size"] == 2 and info["optimizer_steps"] == single["optimizer_steps"] == 68
    assert info["replica_max_abs_diff"] == 0.0  # EMA weights, data_std / data_mean identical on both ranks
    # written once: one run folder, one checkpoint, one metrics file, one "run_id" line
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "single"]
    assert [p.name for p in (runs / "ddp" / "checkpoints").iterdir()] == ["last.ckpt"]
    assert done.stdout.count("tsdiff run_id: ddp  steps") == 1
    # the loss trajectories agree: val loss (a mean over both ranks' halves of the val set) per epoch within 0.05
    # (measured: the runs differ by 0.01-0.02, from their different noise draws, on a loss that falls from ~1.08)
    ddp, one = _epoch_losses(runs / "ddp"), _epoch_losses(runs / "single")
    assert len(ddp) == len(one) == 4
    assert np.abs(ddp.values - one.values).max() < 0.05, (ddp, one)
    assert abs(info["metrics"]["val/loss"] - single["metrics"]["val/loss"]) < 0.05


@pytest.mark.slow
def test_sampling_sharded_over_two_processes_equals_one_process(tmp_path):
    from tsdiff.tasks.sample import run as sample

    runs = tmp_path / "runs"
    rid = train_tiny(runs, run_id="tiny")["run_id"]
    args = [f"runs_dir={runs}", f"model_id={rid}", "num_samples=10", "shard_size=3", "num_diffusion_steps=4", "seed=7",
            "quality.enabled=false", "logger=none", "progress=false", "num_directions=20"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "cmd/sample.py", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (dist_dir,) = (runs / rid / "samples").iterdir()  # written once, by rank 0
    dist = np.load(dist_dir / "samples.npy")
    meta = json.loads((dist_dir / "metrics.json").read_text())["sampling"]
    assert meta["world_size"] == 2 and meta["shard_size"] == 3 and meta["num_samples"] == 10
    one = np.load(Path(sample(compose_cfg("sample", args))["sample_dir"]) / "samples.npy")
    assert dist.shape == (10, 24, 3) and len(np.unique(dist.reshape(10, -1), axis=0)) == 10  # no duplicates
    np.testing.assert_array_equal(dist, one)  # the same windows, in the same order
    other = np.load(Path(sample(compose_cfg("sample", [*args[:-5], "seed=8", *args[-4:]]))["sample_dir"]) / "samples.npy")
    assert not np.allclose(other, one)  # the seed matters
