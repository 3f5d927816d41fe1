"""Fast end-to-end runs of cmd/train.py and cmd/sample.py (in-process through their task functions,
plus one real subprocess run of each entry point)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SCORE, compose_cfg, train_tiny
from tsdiff.runs import RunNotFoundError
from tsdiff.tasks.common import CheckpointError

REPO = Path(__file__).resolve().parents[2]
# the quality verdict (Context-FID + discriminative vs the training windows) with tiny training budgets
QUALITY_TINY = ["quality.num_runs=2", "quality.context_fid_iterations=2", "quality.discriminative_iterations=3",
                "quality.num_threads=1"]


def sample_run(runs_dir, model_id="latest", *extra):
    from tsdiff.tasks.sample import run

    cfg = compose_cfg(
        "sample",
        [f"runs_dir={runs_dir}", f"model_id={model_id}", "num_samples=16", "num_diffusion_steps=5",
         "progress=false", "logger=csv", "num_directions=50", *QUALITY_TINY, *extra],
    )
    return run(cfg)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # transformer, frequency domain, VP
        ["score_model=lstm", "score_model.backbone.d_model=16", "fourier_transform=false"],
        ["score_model/noise_scheduler=vesde", "score_model.likelihood_weighting=true"],
    ],
    ids=["transformer-freq-vp", "lstm-time", "transformer-vesde-likelihood"],
)
def test_train_then_sample_writes_run_and_samples(runs_dir, extra):
    if extra and extra[0] == "score_model=lstm":
        extra = extra[:1] + [e for e in extra[1:]]
        out = _train_lstm(runs_dir, extra)
    else:
        out = train_tiny(runs_dir, *extra)
    run_dir = Path(out["run_dir"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["run_id"] == run_dir.name and out["optimizer_steps"] == 3
    # the checkpoint loads safely with weights_only=True
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert "state_dict" in state

    res = sample_run(runs_dir, run_dir.name)
    sdir = Path(res["sample_dir"])
    samples = np.load(sdir / "samples.npy")
    assert samples.shape == (16, 24, 3) and np.isfinite(samples).all()
    assert np.load(sdir / "real.npy").shape[1:] == (24, 3)
    saved = json.loads((sdir / "metrics.json").read_text())
    assert set(saved["metrics"]) == {"model", "gaussian", "train"}  # secondary, vs the test split
    assert saved["metrics"]["model"]["sliced_wasserstein"] > 0
    assert "beats_gaussian_swd" not in saved
    quality = saved["quality"]  # primary: vs the training windows
    assert set(quality["sets"]) == {"model", "gaussian", "held_out"}
    assert quality["sets"]["model"]["n"] == 16 and quality["settings"]["num_runs"] == 2
    for vals in quality["sets"].values():
        assert vals["context_fid"]["mean"] >= 0 and len(vals["discriminative"]["runs"]) == 2
    assert set(quality["beats_gaussian"]) == {"context_fid", "discriminative"}
    # the spectrum, which Context-FID cannot see, is scored against the same training windows
    spectral = quality["spectral_vs_training"]
    assert set(spectral) == {"model", "gaussian", "held_out"} and all(np.isfinite(v) and v >= 0 for v in spectral.values())
    assert "spectral density distance to the training windows" in quality["text"]
    assert saved["sampling"]["network_evaluations"] == 5


def _train_lstm(runs_dir, extra):
    from tsdiff.tasks.train import run

    overrides = [
        "datamodule=synthetic", "trainer=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "logger=csv", f"runs_dir={runs_dir}",
        *extra,
    ]
    return run(compose_cfg("train", overrides))


def test_sampling_twice_never_overwrites_and_same_seed_same_samples(runs_dir):
    train_tiny(runs_dir)
    a = sample_run(runs_dir)
    b = sample_run(runs_dir)
    assert a["sample_dir"] != b["sample_dir"]
    np.testing.assert_array_equal(np.load(Path(a["sample_dir"]) / "samples.npy"), np.load(Path(b["sample_dir"]) / "samples.npy"))


def test_existing_run_id_is_never_overwritten(runs_dir):
    train_tiny(runs_dir, run_id="myrun")
    before = (runs_dir / "myrun" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        train_tiny(runs_dir, run_id="myrun")
    assert (runs_dir / "myrun" / "checkpoints" / "last.ckpt").read_bytes() == before


def test_unknown_model_id_lists_known_runs(runs_dir):
    train_tiny(runs_dir, run_id="known1")
    with pytest.raises(RunNotFoundError, match="Unknown model_id 'nope'.*known1"):
        sample_run(runs_dir, "nope")


def test_latest_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(RunNotFoundError, match="no run under"):
        sample_run(tmp_path / "empty", "latest")


def test_corrupt_and_missing_checkpoints_are_clear_errors(runs_dir):
    train_tiny(runs_dir, run_id="broken")
    ckpt = runs_dir / "broken" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        sample_run(runs_dir, "broken")
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        sample_run(runs_dir, "broken")


def test_config_not_matching_checkpoint_is_a_clear_error(runs_dir):
    train_tiny(runs_dir, run_id="mismatch")
    cfg_path = runs_dir / "mismatch" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("d_model: 16", "d_model: 32"))
    with pytest.raises(CheckpointError, match="does not match its checkpoint"):
        sample_run(runs_dir, "mismatch")


def test_fourier_override_that_contradicts_the_run_is_refused(runs_dir):
    train_tiny(runs_dir)
    with pytest.raises(ValueError, match="does not match run"):
        sample_run(runs_dir, "latest", "fourier_transform=true")  # the run has the default, time domain


def test_entry_points_run_as_scripts_and_report_errors_cleanly(tmp_path):
    # the real wandb logger, offline because this fake home holds no credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true")
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "cmd" / "train.py"), "datamodule=synthetic", "trainer=fast",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
           "trainer.enable_progress_bar=false", "logger=wandb", f"runs_dir={runs}", *TINY_SCORE]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tsdiff run_id:" in out.stdout
    run_id = out.stdout.split("tsdiff run_id:")[1].split()[0]
    assert list((runs / run_id / "wandb").glob("offline-run-*")), "wandb did not log offline into the run folder"
    out = subprocess.run([sys.executable, str(REPO / "cmd" / "sample.py"), f"runs_dir={runs}", "num_samples=8",
                          "num_diffusion_steps=3", "progress=false", "logger=none", *QUALITY_TINY],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sliced_wasserstein" in out.stdout and "gaussian" in out.stdout
    assert "TRAINING windows" in out.stdout and "the gaussian on context_fid" in out.stdout
    out = subprocess.run([sys.executable, str(REPO / "cmd" / "sample.py"), f"runs_dir={runs}", "model_id=zzz"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert "Unknown model_id 'zzz'" in out.stderr and "Traceback" not in out.stderr


def test_sample_command_takes_cache_overrides(runs_dir):
    train_tiny(runs_dir)
    res = sample_run(runs_dir, "latest", "use_cache=true", "cache_kwargs.tau_0=0.2", "cache_kwargs.R=4")
    cache = res["sampling"]["cache"]
    assert cache["network_calls"] == 5 and cache["full_steps"] >= 2
    with pytest.raises(ValueError, match="cache_kwargs.K"):
        sample_run(runs_dir, "latest", "use_cache=true", "cache_kwargs.K=-1")
    # the config groups (num_diffusion_steps=5 from sample_run is the alias of sampler.steps and wins)
    res = sample_run(runs_dir, "latest", "sampler=dpm_solver_pp", "cache=e2crf_step", "cache.tau_0=0.2", "cache.R=4")
    assert res["sampling"]["solver"] == "dpm_solver++" and res["sampling"]["num_steps"] == 5
    assert res["sampling"]["cache"]["extra"]["path"] == "step" and res["sampling"]["cache"]["network_calls"] == 5
