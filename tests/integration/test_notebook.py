"""The results notebook is executed for real, by the documented one-command HTML export, against runs made
by the train / sample / evaluate / ablation / forecast tasks (tiny budgets)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg, train_tiny
from test_cache_cmds import TINY_BENCH

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "results.ipynb"
FAST_QUALITY = ["num_samples=8", "num_diffusion_steps=3", "progress=false", "logger=none", "num_directions=20",
                "quality.num_runs=2", "quality.context_fid_iterations=2", "quality.discriminative_iterations=2",
                "quality.reference_size=64"]  # the C-FID statistics of 64 training windows, not all 3200: seconds saved
TINY_FORECAST = ["datamodule=forecast_stocks", "datamodule.lookback=16", "datamodule.horizon=4", "model.hidden=8",
                 "model.cond_hidden=8", "model.step_sinusoid_dim=8", "model.step_hidden_dim=8", "model.ar_pretrain_epochs=1",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 "model.val_forecast_windows=2", "eval.max_windows=3", "eval.num_samples=2", "eval.solvers.dpmpp_20=null",
                 "eval.solvers.ddpm_100=null", "baselines.ar.epochs=1", "baselines.dlinear=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two score-model runs (time and frequency domain) sampled and judged, one evaluated, one cache benchmark and
    ablation, one forecast."""
    from tsdiff.tasks.ablation_cache import run as ablation
    from tsdiff.tasks.benchmark_cache import run as benchmark
    from tsdiff.tasks.evaluate import run as evaluate
    from tsdiff.tasks.forecast import run as forecast
    from tsdiff.tasks.sample import run as sample

    runs = tmp_path_factory.mktemp("nb") / "runs"
    time_run = train_tiny(runs, run_id="timerun")["run_id"]  # explicit ids: a process keeps its first run's id otherwise
    freq_run = train_tiny(runs, "fourier_transform=true", run_id="freqrun")["run_id"]
    for rid in (time_run, freq_run):
        sample(compose_cfg("sample", [f"runs_dir={runs}", f"model_id={rid}", *FAST_QUALITY]))
    for which in ("model", "gaussian"):
        evaluate(compose_cfg("evaluate", [f"runs_dir={runs}", f"model_id={time_run}", "mode=fast", "num_runs=1", f"set={which}",
                                          "metrics=[kl,sliced_wasserstein,predictive]", "metric_settings.predictive.iterations=2"]))
    ablation(compose_cfg("ablation_cache", [f"runs_dir={runs}", f"model_id={time_run}", "num_samples=4",
                                            "num_diffusion_steps=4", "batch_size=4", "repeats=1", "warmup=0",
                                            "num_directions=20", "num_threads=1"]))
    benchmark(compose_cfg("benchmark_cache", [f"runs_dir={runs}", f"model_id={time_run}", *TINY_BENCH]))
    forecast(compose_cfg("forecast", [*TINY_FORECAST, f"runs_dir={runs}", f"output_dir={runs / 'forecasts' / 'tiny'}"]))
    return runs, time_run, freq_run


@pytest.mark.slow
def test_documented_html_export_executes_the_notebook_on_saved_runs(runs, tmp_path):
    runs_dir, time_run, freq_run = runs
    out = tmp_path / "html"
    env = {**os.environ, "TSDIFF_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}
    # the command of the notebook's first cell and of docs/index.md, run from the repository root
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute", "notebooks/results.ipynb",
           "--output-dir", str(out), "--ExecutePreprocessor.timeout=300"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (out / "results.html").read_text()
    assert time_run in html and freq_run in html
    assert "held_out" in html and "discriminative_ci95" in html and "gaussian" in html  # the quality verdict
    assert "frequency" in html and re.search(r"\btime\b", html)  # the generation table names both domains
    assert "swd_vs_test" in html and "predictive" in html  # evaluate.py scores joined to the model row
    assert "-- ablation" in html and "no_feedback" in html  # the saved ablation is found and tabulated
    assert "cache vs fewer steps (rel. L2 to uncached)" in html  # the benchmark's equal-time comparisons
    assert "seasonal_naive" in html and "crps" in html and "pi95_coverage" in html  # the forecast table with its baselines
    # figures: series grid, spectra, embedding, a Pareto plot per comparison, the fan chart (inline PNGs)
    assert html.count("data:image/png;base64") >= 7
    assert list(runs_dir.glob("*/samples/*/samples_vs_real.png"))  # the figure is also saved beside the samples
