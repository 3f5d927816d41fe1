"""`cmd/evaluate.py`: .npy inputs, a run folder (model_id), results JSON, no silent overwrite, CSV logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from tsdiff.runs import RunNotFoundError

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
FAST = ["metrics=[kl,spectral,sliced_wasserstein,segment_dtw_paired]", "metric_settings.sliced_wasserstein.num_directions=16"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def _arrays(tmp_path, n=24, length=12, channels=2):
    g = np.random.default_rng(0)
    real, fake = g.random((n, length, channels)), g.random((n, length, channels)) + 0.1
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    return tmp_path / "real.npy", tmp_path / "fake.npy"


def _make_run(runs_dir: Path, run_id: str = "abc12345") -> Path:
    g = np.random.default_rng(1)
    run = runs_dir / run_id
    (run / "samples" / "20260101-000000-aaaa").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "created": "2026-01-01T00:00:00+00:00"}))
    sample = run / "samples" / "20260101-000000-aaaa"
    np.save(sample / "samples.npy", g.normal(size=(20, 10, 3)).astype(np.float32))
    np.save(sample / "real.npy", g.normal(size=(20, 10, 3)).astype(np.float32))
    return sample


def test_npy_inputs_write_json_and_never_overwrite(tmp_path, capsys):
    from tsdiff.tasks.evaluate import run

    real, fake = _arrays(tmp_path)
    out = tmp_path / "res.json"
    first = run(_compose([f"real_path={real}", f"fake_path={fake}", f"results_path={out}", "logger=csv", *FAST]))
    saved = json.loads(out.read_text())
    assert saved["results"]["kl"]["mean"] == pytest.approx(first["results"]["kl"]["mean"])
    assert len(saved["results"]["sliced_wasserstein"]["runs"]) == 5  # paper mode: 5 runs
    assert "segment_dtw_paired@6" in saved["results"]
    assert list(Path(first["log_dir"]).rglob("metrics.csv"))
    second = run(_compose([f"real_path={real}", f"fake_path={fake}", f"results_path={out}", *FAST]))
    assert Path(second["results_path"]).name == "res-1.json"
    assert json.loads(out.read_text()) == saved  # the first file is untouched
    assert "already exists" in capsys.readouterr().out


def test_model_id_reads_newest_samples_of_the_run(tmp_path):
    from tsdiff.tasks.evaluate import run

    runs = tmp_path / "runs"
    sample = _make_run(runs)
    record = run(_compose([f"runs_dir={runs}", "model_id=latest", "mode=fast", "metrics=[kl,marginal_wasserstein]",
                           "reference=test"]))
    assert Path(record["results_path"]) == sample / "evaluation-test.json"
    assert record["source"]["reference"] == "test"
    assert record["source"]["sample_id"] == sample.name
    assert record["results"]["marginal_wasserstein"]["mean"] > 0
    with pytest.raises(RunNotFoundError, match="Unknown model_id"):
        run(_compose([f"runs_dir={runs}", "model_id=nope"]))
    with pytest.raises(FileNotFoundError, match="no config.yaml"):  # default reference=train needs the run config
        run(_compose([f"runs_dir={runs}", "model_id=latest", "metrics=[kl]"]))
    with pytest.raises(ValueError, match="reference must be"):
        run(_compose([f"runs_dir={runs}", "model_id=latest", "metrics=[kl]", "reference=val"]))


def test_model_id_defaults_to_the_runs_training_windows(tmp_path):
    """Diffusion-TS protocol: real = the run's training windows, rebuilt from its datamodule config."""
    from omegaconf import OmegaConf

    from tsdiff.tasks.evaluate import run, run_training_windows

    runs = tmp_path / "runs"
    sample = _make_run(runs)
    dm_cfg = {"_target_": "tsdiff.data.SyntheticDataModule", "data_dir": str(tmp_path / "syn"), "seq_len": 10,
              "n_samples": 300, "n_channels": 3, "seed": 0}
    OmegaConf.save(OmegaConf.create({"datamodule": dm_cfg}), runs / "abc12345" / "config.yaml")
    train = run_training_windows(runs / "abc12345")
    assert train.shape[1:] == (10, 3) and len(train) > 20
    record = run(_compose([f"runs_dir={runs}", "model_id=latest", "metrics=[kl,marginal_wasserstein]"]))
    assert Path(record["results_path"]) == sample / "evaluation.json"
    assert record["source"]["reference"] == "train" and record["real_shape"] == list(train.shape)


def test_bad_requests_fail_clearly(tmp_path):
    from tsdiff.tasks.evaluate import run

    real, _ = _arrays(tmp_path)
    np.save(tmp_path / "other.npy", np.zeros((4, 12, 5)))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run(_compose([]))
    with pytest.raises(ValueError, match="channels=5"):
        run(_compose([f"real_path={real}", f"fake_path={tmp_path / 'other.npy'}", "metrics=[kl]"]))
    with pytest.raises(FileNotFoundError, match="no file"):
        run(_compose([f"real_path={real}", f"fake_path={tmp_path / 'missing.npy'}"]))


def test_command_line_prints_table(tmp_path):
    real, fake = _arrays(tmp_path)
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cmd" / "evaluate.py"), f"real_path={real}", f"fake_path={fake}",
         f"results_path={out}", f"runs_dir={tmp_path / 'runs'}", "mode=fast", "metrics=[kl,spectral]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mean ± ci95" in proc.stdout and "spectral" in proc.stdout
    assert set(json.loads(out.read_text())["results"]) == {"kl", "spectral"}


def test_set_gaussian_scores_the_reference_set_the_sample_command_judged(tmp_path):
    from conftest import compose_cfg, train_tiny
    from tsdiff.tasks.evaluate import run as evaluate
    from tsdiff.tasks.sample import run as sample

    runs = tmp_path / "runs"
    rid = train_tiny(runs, run_id="tiny")["run_id"]
    sampled = sample(compose_cfg("sample", [f"runs_dir={runs}", f"model_id={rid}", "num_samples=8", "num_diffusion_steps=3",
                                            "progress=false", "logger=none", "num_directions=20", "quality.enabled=false", "seed=3"]))
    base = [f"runs_dir={runs}", f"model_id={rid}", "metrics=[marginal_wasserstein]", "scale=none", "reference=test"]
    gauss = evaluate(compose_cfg("evaluate", [*base, "set=gaussian"]))
    # rebuilt from the sampling run's saved seed (3), not evaluate's own seed: the very set sample.py scored
    assert gauss["results"]["marginal_wasserstein"]["mean"] == pytest.approx(sampled["metrics"]["gaussian"]["marginal_wasserstein"])
    assert gauss["source"]["set"] == "gaussian" and Path(gauss["results_path"]).name == "evaluation-test-gaussian.json"
    held = evaluate(compose_cfg("evaluate", [*base[:-1], "set=held_out"]))
    assert Path(held["results_path"]).name == "evaluation-held_out.json" and held["fake_shape"][0] == 8
    with pytest.raises(ValueError, match="set='train' must be model"):
        evaluate(compose_cfg("evaluate", [*base, "set=train"]))
