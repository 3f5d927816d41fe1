"""Bad and hostile inputs against every command: each gives one line `tsdiff error (...)` naming the cause,
exit status 2, and leaves every file (runs, data, working directory) exactly as it was.

The cases run in-process through :func:`tsdiff.tasks.cli.run_task` (what ``cmd/*.py`` call), on copies of
a tiny trained run; two run the real entry points as subprocesses to check the process exit status.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import compose_cfg, train_tiny

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    command: str                      # train | sample | evaluate | forecast | benchmark_cache | ablation_cache
    overrides: list[str]              # {runs}, {work}, {data} are replaced by the case's folders
    expect: str                       # a substring of the one-line message (the cause)
    setup: Callable[[Path], None] | None = None   # mutates the case's copy before the snapshot
    env: dict[str, str | None] = field(default_factory=dict)   # None: unset


def _write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def _other_ckpt(root: Path) -> None:
    shutil.copy(root / "foreign" / "last.ckpt", root / "runs" / "good" / "checkpoints" / "last.ckpt")


def _npy(rel: str, array, allow_pickle: bool = False) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, array, allow_pickle=allow_pickle)

    return setup


def _both(*fns):
    return lambda root: [f(root) for f in fns]


def _csv(text: str) -> Callable[[Path], None]:
    return _write("data/forecast/bad.csv", text)


_REAL = np.random.default_rng(0).normal(size=(20, 10, 3)).astype(np.float32)
_NAN = _REAL.copy()
_NAN[0, 0, 0] = np.nan
_S = ["model_id=good", "num_samples=4", "num_diffusion_steps=2", "progress=false", "logger=none"]
_E = ["real_path={work}/real.npy", "fake_path={work}/fake.npy", "mode=fast", "metrics=[kl]"]
_REAL_FAKE = _both(_npy("work/real.npy", _REAL), _npy("work/fake.npy", _REAL))
_T = ["datamodule=synthetic", "trainer=fast", "logger=none", "trainer.enable_progress_bar=false"]
_F = ["datamodule=forecast_stocks"]
_CSV = ["datamodule=forecast_csv", "datamodule.filename=bad.csv", "model=timediff_ci", *_T[1:]]
_GOOD_CSV = "date,a,b\n" + "".join(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00,{np.sin(i / 5):.4f},{np.cos(i / 7):.4f}\n"
                                  for i in range(400))

CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- sample: options
    "sample-num_samples-abc": Case("sample", [*_S, "num_samples=abc"], "num_samples='abc' must be an integer"),
    "sample-num_samples-0": Case("sample", [*_S, "num_samples=0"], "num_samples=0 must be an integer >= 1"),
    "sample-num_samples-negative": Case("sample", [*_S, "num_samples=-5"], "num_samples=-5"),
    "sample-steps-0": Case("sample", [*_S, "num_diffusion_steps=0"], "num_diffusion_steps=0"),
    "sample-steps-float": Case("sample", [*_S, "num_diffusion_steps=1.5"], "num_diffusion_steps=1.5"),
    "sample-batch-0": Case("sample", [*_S, "sample_batch_size=0"], "sample_batch_size=0"),
    "sample-solver-unknown": Case("sample", [*_S, "solver=rk4"], "solver='rk4' must be one of"),
    "sample-use_cache-not-bool": Case("sample", [*_S, "use_cache=maybe"], "use_cache='maybe' must be true or false"),
    "sample-tau0-negative": Case("sample", [*_S, "use_cache=true", "cache_kwargs.tau_0=-1"], "cache_kwargs.tau_0=-1"),
    "sample-R-0": Case("sample", [*_S, "use_cache=true", "cache_kwargs.R=0"], "cache_kwargs.R=0"),
    "sample-probe-ratio-2": Case("sample", [*_S, "cache_kwargs.random_probe_ratio=2"], "cache_kwargs.random_probe_ratio=2"),
    "sample-cache-mode": Case("sample", [*_S, "cache_kwargs.mode=fast"], "cache_kwargs.mode='fast'"),
    "sample-directions-0": Case("sample", [*_S, "num_directions=0"], "num_directions=0"),
    "sample-quality-runs-0": Case("sample", [*_S, "quality.num_runs=0"], "quality.num_runs=0 must be an integer >= 1"),
    "sample-seed-text": Case("sample", [*_S, "seed=abc"], "seed='abc' must be an integer"),
    "sample-device-missing-gpu": Case("sample", [*_S, "device=cuda:7"], "device='cuda:7' is not available"),
    "sample-device-nonsense": Case("sample", [*_S, "device=banana"], "device='banana' must be auto or a torch device"),
    "sample-logger-kind": Case("sample", [*_S, "logger.kind=tensorboard"], "logger.kind='tensorboard' must be one of"),
    # ---------------------------------------------------------------- sample: run ids and run folders
    "sample-unknown-model": Case("sample", [*_S, "model_id=nope"], "Unknown model_id 'nope'"),
    "sample-model-id-escapes": Case("sample", [*_S, "model_id=../runs/good"], "model_id='../runs/good' is not a run id"),
    "sample-model-id-absolute": Case("sample", [*_S, "model_id=/etc"], "model_id='/etc' is not a run id"),
    "sample-model-id-hidden": Case("sample", [*_S, "model_id=.hydra"], "model_id='.hydra' is not a run id"),
    "sample-latest-no-runs": Case("sample", [*_S, "model_id=latest", "runs_dir={work}/empty"], "no run under"),
    "sample-runs_dir-is-file": Case("sample", [*_S, "runs_dir={work}/afile"], "is a file, not a folder",
                                    _write("work/afile", "x")),
    "sample-results-is-dir": Case("sample", [*_S, "results_path={work}"], "is a folder"),
    "sample-results-parent-file": Case("sample", [*_S, "results_path={work}/afile/x.json"], "is a file, not a folder",
                                       _write("work/afile", "x")),
    "sample-corrupt-run-json": Case("sample", _S, "run.json is corrupt", _write("runs/good/run.json", "{not json")),
    "sample-run-json-list": Case("sample", _S, "does not hold a JSON object", _write("runs/good/run.json", "[1, 2]")),
    "sample-corrupt-config": Case("sample", _S, "config.yaml is corrupt", _write("runs/good/config.yaml", "a: [1, 2\nb: {")),
    "sample-config-not-a-model": Case("sample", _S, "does not describe a model", _write("runs/good/config.yaml", "seed: 0\n")),
    "sample-missing-config": Case("sample", _S, "has no config.yaml", _remove("runs/good/config.yaml")),
    "sample-corrupt-ckpt": Case("sample", _S, "cannot be loaded", _write("runs/good/checkpoints/last.ckpt", b"garbage" * 10)),
    "sample-missing-ckpt": Case("sample", _S, "has no checkpoint", _remove("runs/good/checkpoints/last.ckpt")),
    "sample-ckpt-of-other-model": Case("sample", _S, "does not match its checkpoint", _other_ckpt),
    "sample-fourier-mismatch": Case("sample", [*_S, "fourier_transform=true"], "does not match run 'good'"),
    # ---------------------------------------------------------------- evaluate
    "evaluate-missing-real": Case("evaluate", ["real_path={work}/nope.npy", "fake_path={work}/fake.npy"], "real_path=",
                                  _REAL_FAKE),
    "evaluate-only-fake": Case("evaluate", ["fake_path={work}/fake.npy"], "give both real_path", _REAL_FAKE),
    "evaluate-pickled-npy": Case("evaluate", _E, "is not a plain .npy array",
                                 _both(_REAL_FAKE, _npy("work/fake.npy", np.array([{"a": 1}], dtype=object), True))),
    "evaluate-2d-array": Case("evaluate", _E, "must have shape (N, length, channels)",
                              _both(_REAL_FAKE, _npy("work/fake.npy", _REAL[:, :, 0]))),
    "evaluate-nan": Case("evaluate", _E, "NaN", _both(_REAL_FAKE, _npy("work/fake.npy", _NAN))),
    "evaluate-channels-differ": Case("evaluate", _E, "channels", _both(_REAL_FAKE, _npy("work/fake.npy", _REAL[..., :2]))),
    "evaluate-mode": Case("evaluate", [*_E, "mode=slow"], "mode='slow' must be one of", _REAL_FAKE),
    "evaluate-num_runs-0": Case("evaluate", [*_E, "num_runs=0"], "num_runs=0", _REAL_FAKE),
    "evaluate-unknown-metric": Case("evaluate", [*_E, "metrics=[fid9000]"], "fid9000", _REAL_FAKE),
    "evaluate-nothing": Case("evaluate", [], "nothing to evaluate"),
    "evaluate-model-and-paths": Case("evaluate", [*_E, "model_id=good", "runs_dir={runs}"], "not both", _REAL_FAKE),
    "evaluate-run-without-samples": Case("evaluate", ["model_id=good", "runs_dir={runs}"], "has no samples yet"),
    "evaluate-scale": Case("evaluate", [*_E, "scale=zscore"], "scale='zscore'", _REAL_FAKE),
    "evaluate-existing-results-then-fails": Case("evaluate", [*_E, "results_path={work}/s.json"], "NaN",
                                                 _both(_REAL_FAKE, _write("work/s.json", "{}"), _npy("work/fake.npy", _NAN))),
    "evaluate-results-is-dir": Case("evaluate", [*_E, "results_path={work}"], "is a folder", _REAL_FAKE),
    # ---------------------------------------------------------------- train
    "train-max_epochs-abc": Case("train", [*_T, "trainer.max_epochs=abc"], "trainer.max_epochs='abc' must be an integer"),
    "train-limit-batches-negative": Case("train", [*_T, "trainer.limit_train_batches=-1"], "trainer.limit_train_batches=-1"),
    "train-devices": Case("train", [*_T, "trainer.devices=many"], "trainer.devices='many'"),
    "train-accelerator": Case("train", [*_T, "trainer.accelerator=quantum"], "trainer.accelerator='quantum'"),
    "train-batch-size-0": Case("train", [*_T, "datamodule.batch_size=0"], "datamodule.batch_size=0"),
    "train-val-fraction": Case("train", [*_T, "datamodule.val_fraction=1.5"], "datamodule.val_fraction=1.5"),
    "train-seed-float": Case("train", [*_T, "seed=1.5"], "seed=1.5 must be an integer"),
    "train-run-id-escapes": Case("train", [*_T, "run_id=../x"], "run_id='../x' is not a run id"),
    "train-run-id-exists": Case("train", [*_T, "run_id=good"], "already exists"),
    "train-resume-unknown": Case("train", ["resume=nope"], "Unknown resume 'nope'"),
    "train-resume-no-ckpt": Case("train", ["resume=good"], "no checkpoint to resume from",
                                 _remove("runs/good/checkpoints/last.ckpt")),
    "train-resume-done": Case("train", ["resume=good"], "is done"),
    "train-resume-and-other-run-id": Case("train", ["resume=good", "run_id=other"], "disagree"),
    "train-kaggle-no-credentials": Case("train", ["datamodule=nasdaq", *_T[1:]], "Kaggle data set",
                                        env={"HOME": "{work}/../../home", "KAGGLE_CONFIG_DIR": "{work}/../../home/.kaggle", "KAGGLE_USERNAME": None,
                                             "KAGGLE_KEY": None, "KAGGLE_API_TOKEN": None}),
    "train-csv-missing": Case("train", _CSV, "bad.csv"),
    "train-csv-nan": Case("train", _CSV, "missing/NaN value", _csv(_GOOD_CSV.replace(",0.8415,", ",nan,", 1))),
    "train-csv-wrong-shape": Case("train", _CSV, "bad.csv", _csv("date\n2020-01-01\n2020-01-02\n")),
    "train-csv-text-values": Case("train", _CSV, "bad.csv", _csv("date,a\n" + "2020-01-01,hello\n" * 300)),
    # ---------------------------------------------------------------- forecast
    "forecast-not-timediff": Case("forecast", ["model_id=good", *_F], "is not a TimeDiff run"),
    "forecast-num-samples-0": Case("forecast", [*_F, "eval.num_samples=0"], "eval.num_samples=0"),
    "forecast-split": Case("forecast", [*_F, "eval.split=holdout"], "eval.split='holdout'"),
    "forecast-odd-antithetic": Case("forecast", [*_F, "eval.num_samples=3"], "eval.num_samples=3 is odd"),
    "forecast-output-dir-file": Case("forecast", [*_F, "output_dir={work}/afile"], "is a file, not a folder",
                                     _write("work/afile", "x")),
    "forecast-horizons": Case("forecast", [*_F, "timing.horizons=[0]"], "timing.horizons=[0]"),
    "forecast-unknown-run": Case("forecast", [*_F, "model_id=nope"], "Unknown model_id 'nope'"),
    # ---------------------------------------------------------------- cache benchmark / ablation
    "benchmark-num-samples-abc": Case("benchmark_cache", ["model_id=good", "num_samples=abc"], "num_samples='abc'"),
    "benchmark-tau0": Case("benchmark_cache", ["model_id=good", "cache_kwargs.tau_0=-0.1"], "cache_kwargs.tau_0=-0.1"),
    "benchmark-batch-sizes": Case("benchmark_cache", ["model_id=good", "batch_sizes=[0,16]"], "batch_sizes=[0, 16]"),
    "benchmark-latest-empty": Case("benchmark_cache", ["model_id=latest", "runs_dir={work}/empty"], "no run under"),
    "ablation-repeats-0": Case("ablation_cache", ["model_id=good", "repeats=0"], "repeats=0"),
    "ablation-unknown-run": Case("ablation_cache", ["model_id=nope"], "Unknown model_id 'nope'"),
    "ablation-corrupt-ckpt": Case("ablation_cache", ["model_id=good"], "cannot be loaded",
                                  _write("runs/good/checkpoints/last.ckpt", b"PK\x03\x04 not really a zip")),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A tiny trained run `good`, the checkpoint of a wider model (foreign/last.ckpt), a work folder."""
    root = tmp_path_factory.mktemp("bad_inputs_template")
    train_tiny(root / "runs", run_id="good")
    _other_model_checkpoint(root / "foreign" / "last.ckpt")
    for rel in ("work", "data/forecast"):
        (root / rel).mkdir(parents=True)
    (root / "data" / "forecast" / "good.csv").write_text(_GOOD_CSV)
    return root


def _other_model_checkpoint(path: Path) -> None:
    """The checkpoint of a wider score model (what a user gets by copying last.ckpt between runs)."""
    import torch

    from conftest import TINY_SCORE
    from tsdiff.tasks.common import instantiate_model

    cfg = compose_cfg("train", [*TINY_SCORE, "score_model.backbone.d_model=32"])
    model = instantiate_model(cfg, {"n_channels": 3, "max_len": 24})
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, path)


def snapshot(root: Path) -> dict[str, str]:
    """Every file (content hash) and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return out


def _fill(text: str, root: Path) -> str:
    return text.format(runs=root / "runs", work=root / "work", data=root / "data")


def _task(command: str):
    import importlib

    return importlib.import_module(f"tsdiff.tasks.{command}").run


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_error_and_changes_nothing(name, template, tmp_path, monkeypatch, capsys):
    from tsdiff.tasks.cli import run_task

    case = CASES[name]
    root = tmp_path / "case"
    shutil.copytree(template, root)
    if case.setup:
        case.setup(root)
    monkeypatch.chdir(root / "work")
    monkeypatch.delenv("TSDIFF_DEBUG", raising=False)
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, _fill(value, root))
    base = [f"runs_dir={root / 'runs'}", f"data_root={root / 'data'}"] if case.command != "evaluate" else [f"runs_dir={root / 'runs'}"]
    cfg = compose_cfg(case.command, [*base, *(_fill(o, root) for o in case.overrides)])
    before = snapshot(root)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        run_task(_task(case.command), cfg)

    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert "instead" not in captured.out, "no 'writing to X instead' note for a call that writes nothing"
    assert exit_info.value.code == 2
    assert err and err[-1].startswith("tsdiff error ("), err
    assert "Traceback" not in "\n".join(err)
    assert case.expect in err[-1], err[-1]
    assert len(err[-1]) < 900, "a one-line message, not a dump"
    assert snapshot(root) == before, "a failing command must leave every file and folder as it was"


def test_there_are_at_least_fifty_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("script, args, expect", [
    ("train.py", ["trainer.max_epochs=abc", "logger=none"], "trainer.max_epochs='abc'"),
])
def test_entry_point_exit_status_and_no_hydra_folders(script, args, expect, template, tmp_path):
    root = tmp_path / "case"
    shutil.copytree(template, root)
    before = snapshot(root)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(REPO / "cmd" / script), f"runs_dir={root / 'runs'}", *args],
                          cwd=root / "work", env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("tsdiff error") and expect in lines[-1] and "Traceback" not in proc.stderr
    assert snapshot(root) == before  # no runs_dir/.hydra/<stamp>/, no log file in the working directory


def test_sample_never_overwrites_an_existing_results_path(template, tmp_path, capsys):
    """The data-loss case of issue 18: `results_path=<a file the user has>` keeps that file and writes s-1.json."""
    from tsdiff.tasks.cli import run_task
    from tsdiff.tasks.sample import run

    root = tmp_path / "case"
    shutil.copytree(template, root)
    mine = root / "work" / "s.json"
    mine.write_text('{"my": "scores"}')
    out = run_task(run, compose_cfg("sample", [f"runs_dir={root / 'runs'}", f"data_root={root / 'data'}", *_S,
                                                f"results_path={mine}", "num_directions=10"]))
    assert json.loads(mine.read_text()) == {"my": "scores"}
    assert out["results_path"] == str(root / "work" / "s-1.json")
    assert json.loads((root / "work" / "s-1.json").read_text())["run_id"] == "good"
    assert f"{mine} already exists" in capsys.readouterr().out
