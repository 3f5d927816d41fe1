"""End-to-end runs of cmd/benchmark_cache.py and cmd/ablation_cache.py on a tiny freshly trained model
(in-process through their task functions, plus the Hydra entry point once)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg, train_tiny

REPO = Path(__file__).resolve().parents[2]

TINY_BENCH = [
    "num_samples=8", "num_diffusion_steps=7", "repeats=1", "warmup=0", "num_seeds=2", "batch_sizes=[1,4]",
    "sweeps.tau_0=[0.3]", "sweeps.R=[]", "matched.solvers=[dpm_solver++]", "matched.steps=[5]", "matched.fractions=[0.5]",
    "context_fid.iterations=2", "context_fid.reference_size=16", "forward_costs.batches=[2]", "forward_costs.repeats=1",
    "token_scaling.lengths=[8]", "token_scaling.batches=[2]", "token_scaling.fractions=[0.5]", "token_scaling.repeats=1",
    "num_threads=1",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cache_runs")
    out = train_tiny(runs, "score_model.backbone.num_layers=2")
    return runs, Path(out["run_dir"]).name


def test_benchmark_cache_writes_results_and_plot(tiny_run, tmp_path):
    from tsdiff.tasks.benchmark_cache import run

    runs, run_id = tiny_run
    res_path = tmp_path / "bench.json"
    cfg = compose_cfg("benchmark_cache", [f"runs_dir={runs}", f"model_id={run_id}", f"results_path={res_path}", *TINY_BENCH])
    res = run(cfg)
    saved = json.loads(res_path.read_text())
    assert [r["batch"] for r in saved["by_batch"]] == [1, 4]
    for row in saved["by_batch"]:
        assert row["baseline_s"] > 0 and row["cached_s"] > 0 and 0 < row["fraction_recomputed"] <= 1
        assert row["rel_l2"] >= 0 and row["path"] in ("token", "step")
    assert saved["sweeps"][0]["param"] == "tau_0" and saved["sweeps"][0]["value"] == 0.3
    # Euler-Maruyama on the same Brownian path (3- and 4-point grids are subsets of the 7-point grid), then
    # DPM-Solver++ from the same x_T; every point has a time, a rel L2 and a Context-FID
    em, dpm = saved["matched"]
    assert em["brownian_matched"] and not dpm["brownian_matched"] and dpm["solver"] == "dpm_solver++"
    assert [r["name"] for r in em["rows"]] == ["uncached", "e2crf", "step", "token", "step_forecast", "3 steps", "4 steps"]
    assert [r["steps"] for r in dpm["rows"] if r["method"] == "fewer-steps"] == [2]
    for m in (em, dpm):
        for r in m["rows"]:
            assert r["time_per_sample_s"] > 0 and r["context_fid"] >= 0 and (r["rel_l2"] > 0) == (r["name"] != "uncached")
            if r["method"] == "e2crf":
                assert r["beats_fewer_steps"] in (True, False)
    judge = saved["judge"]
    assert len(judge["uncached_spread"]) == 3 and judge["limit"] > 0
    assert saved["forward_costs"][0]["tokens"] > 0 and saved["token_scaling"][0]["length"] == 8
    assert Path(res["plot_path"]).is_file()


def test_ablation_cache_writes_all_variants(tiny_run, tmp_path):
    from tsdiff.tasks.ablation_cache import run

    runs, run_id = tiny_run
    res_path = tmp_path / "abl.json"
    cfg = compose_cfg("ablation_cache", [
        f"runs_dir={runs}", f"model_id={run_id}", f"results_path={res_path}", "num_samples=4", "num_diffusion_steps=6",
        "batch_size=4", "repeats=1", "warmup=0", "num_directions=20", "num_threads=1", "cache_kwargs.tau_0=0.3",
    ])
    res = run(cfg)
    names = [r["variant"] for r in json.loads(res_path.read_text())["variants"]]
    assert names == ["baseline", "e2crf", "no_event", "no_feedback", "no_energy", "forecast", "naive", "random"]
    rows = {r["variant"]: r for r in res["variants"]}
    assert rows["random"]["path"] == "token" and rows["naive"]["cache_kwargs"]["selection"] == "fixed"
    assert Path(res["plot_path"]).is_file()


def test_bad_option_is_a_clear_error(tiny_run):
    from tsdiff.tasks.benchmark_cache import run

    runs, run_id = tiny_run
    cfg = compose_cfg("benchmark_cache", [f"runs_dir={runs}", f"model_id={run_id}", "cache_kwargs.R=0", *TINY_BENCH])
    with pytest.raises(ValueError, match="cache_kwargs.R"):
        run(cfg)


def test_benchmark_entry_point_runs(tiny_run, tmp_path):
    runs, run_id = tiny_run
    res_path = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "cmd" / "ablation_cache.py"), f"runs_dir={runs}", f"model_id={run_id}",
         f"results_path={res_path}", "num_samples=2", "num_diffusion_steps=4", "batch_size=2", "repeats=1", "warmup=0",
         "num_directions=10", "num_threads=1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no_feedback" in proc.stdout and res_path.is_file()


def test_the_configured_guidance_hook_reaches_every_sampler_of_the_ablation(tiny_run, tmp_path, monkeypatch):
    from tsdiff.sampling import guidance
    from tsdiff.tasks.ablation_cache import run

    calls = []
    original = guidance.ClipDenoised.__call__
    monkeypatch.setattr(guidance.ClipDenoised, "__call__", lambda self, *a: calls.append(self) or original(self, *a))
    runs, run_id = tiny_run
    cfg = compose_cfg("ablation_cache", [
        f"runs_dir={runs}", f"model_id={run_id}", f"results_path={tmp_path / 'abl.json'}", "num_samples=4",
        "num_diffusion_steps=6", "batch_size=4", "repeats=1", "warmup=0", "num_directions=20", "num_threads=1",
        "+sampler.guidance._target_=tsdiff.sampling.guidance.ClipDenoised", "+sampler.guidance.low=-3",
        "+sampler.guidance.high=3",
    ])
    run(cfg)
    hooks = {id(h) for h in calls}
    assert len(hooks) >= 7 and all(h.low == -3.0 for h in calls)  # baseline and every variant built one
