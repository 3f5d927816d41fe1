"""Figures (tsdiff.viz) and the cross-run views of tsdiff.results.tables the results notebook draws."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tsdiff.results import (  # noqa: E402
    ResultFileError, benchmark_sections, find_results, forecast_table, generation_table, load_samples, pareto_points, stamp,
    write_result,
)
from tsdiff.viz.generation import embedding_plot, pca_2d, series_grid, spectra_plot  # noqa: E402
from tsdiff.viz.pareto import pareto_front, pareto_plot  # noqa: E402


def _sets(n=20, length=16, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    real = np.sin(0.5 * t)[None, :, None] + 0.1 * rng.standard_normal((n, length, channels))
    return {"real": real, "model": rng.standard_normal((n, length, channels))}


def test_pca_2d_uses_the_real_axes_and_is_deterministic():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((50, 4, 1)) * np.array([5.0, 1.0, 0.1, 0.1])[None, :, None]
    a, b = pca_2d(real, real[:5] + 100.0)
    a2, _ = pca_2d(real, real[:5])
    np.testing.assert_allclose(a, a2)  # same input, same coordinates (fixed axis signs)
    assert a.shape == (50, 2) and b.shape == (5, 2)
    assert np.var(a[:, 0]) > np.var(a[:, 1]) > 0  # first axis = most variance
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-9)  # centred on the real windows
    assert np.abs(b).max() > 50  # another set is projected, not re-centred


def test_figures_have_one_panel_per_channel_and_set():
    sets = _sets(channels=2)
    grid = series_grid(sets, n=3)
    assert len(grid.axes) == 2 * 2 and grid.axes[0].get_title().startswith("real (3 of 20)")
    spec = spectra_plot(sets)
    assert len(spec.axes) == 2 and [l.get_label() for l in spec.axes[0].get_lines()] == ["real", "model"]
    assert len(spec.axes[0].get_lines()[0].get_xdata()) == 16 // 2  # rfft bins without the zero frequency
    emb = embedding_plot(sets, max_points=7)
    assert [len(c.get_offsets()) for c in emb.axes[0].collections] == [7, 7]
    plt.close("all")


def test_figures_refuse_sets_that_cannot_be_compared():
    sets = _sets()
    with pytest.raises(ValueError, match="real set 'train' is not among"):
        series_grid(sets, real="train")
    with pytest.raises(ValueError, match="windows of shape"):
        spectra_plot({**sets, "other": np.zeros((4, 8, 2))})
    with pytest.raises(ValueError, match=r"expected a non-empty \(N, length, channels\)"):
        embedding_plot({"real": np.zeros((4, 8))})


def test_pareto_front_and_plot():
    assert pareto_front([(3, 1.0), (1, 3.0), (2, 2.0), (2.5, 2.5), (4, 1.0)]) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    rows = [{"group": "uncached", "time_per_sample_s": 1.0, "rel_l2": 0.0},
            {"group": "fewer-steps", "time_per_sample_s": 0.3, "rel_l2": 0.3},
            {"group": "fewer-steps", "time_per_sample_s": 0.5, "rel_l2": 0.2}]
    fig = pareto_plot(rows)
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ["uncached", "fewer-steps", "Pareto front"]
    with pytest.raises(ValueError, match="no row has both"):
        pareto_plot([{"group": "a", "time_per_sample_s": 1.0}])
    plt.close("all")


def _run(root, rid, domain):
    run = root / rid
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model_target": "tsdiff.models.score_models.ScoreModule",
                                              "datamodule_target": "tsdiff.data.StocksDataModule"}))
    (run / "config.yaml").write_text(f"model: null\nfourier_transform: {str(domain == 'frequency').lower()}\n")
    return run


def _interval(mean):
    return {"mean": mean, "ci95": 0.01, "runs": [mean]}


def _sample(rid, cfid):
    sets = {s: {"n": 8, "context_fid": _interval(v), "discriminative": _interval(0.1)}
            for s, v in (("model", cfid), ("gaussian", 0.2), ("held_out", 0.3))}
    return stamp("sample", {"run_id": rid, "num_samples": 8, "num_diffusion_steps": 4, "sampling": {},
                            "quality": {"sets": sets, "beats_gaussian": {}},
                            "metrics": {s: {"sliced_wasserstein": 1.0} for s in ("model", "gaussian", "train")}})


def test_generation_table_joins_runs_domains_and_evaluations(tmp_path):
    for rid, domain, cfid in (("t1", "time", 0.05), ("f1", "frequency", 0.09)):
        run = _run(tmp_path, rid, domain)
        write_result(run / "samples" / "s1" / "metrics.json", _sample(rid, cfid))
    write_result(tmp_path / "t1" / "samples" / "s1" / "evaluation.json", stamp("evaluation", {
        "source": {"model_id": "t1", "sample_id": "s1", "reference": "train"}, "mode": "fast",
        "results": {"predictive": _interval(0.25), "segment_dtw_paired@6": _interval(3.0), "segment_dtw_paired@8": _interval(4.0)}}, run_id="t1"))
    write_result(tmp_path / "t1" / "samples" / "s1" / "evaluation-gaussian.json", stamp("evaluation", {
        "source": {"model_id": "t1", "sample_id": "s1", "reference": "train", "set": "gaussian"}, "mode": "fast",
        "results": {"predictive": _interval(0.5)}}, run_id="t1"))
    rows = {(r["run_id"], r["set"]): r for r in generation_table(find_results(tmp_path), tmp_path)}
    assert set(rows) == {(rid, s) for rid in ("t1", "f1") for s in ("model", "gaussian", "held_out")}
    assert rows["t1", "model"]["domain"] == "time" and rows["f1", "model"]["domain"] == "frequency"
    assert rows["t1", "model"]["data"] == "StocksDataModule" and rows["f1", "model"]["context_fid"] == 0.09
    assert rows["t1", "model"]["predictive"] == 0.25 and rows["t1", "model"]["dtw@6"] == 3.0 and rows["t1", "model"]["dtw@8"] == 4.0
    assert "predictive" not in rows["f1", "model"] and "predictive" not in rows["t1", "held_out"]
    assert rows["t1", "gaussian"]["predictive"] == 0.5  # `cmd/evaluate.py set=gaussian` joins the Gaussian row
    assert rows["t1", "gaussian"]["swd_vs_test"] == 1.0 and rows["t1", "held_out"]["swd_vs_test"] is None


def test_forecast_table_pareto_points_and_load_samples(tmp_path):
    write_result(tmp_path / "forecasts" / "f" / "forecast.json", stamp("forecast", {"dataset": "energy", "horizon": 24, "rows": [
        {"method": "timediff[dpmpp_10]", "kind": "timediff", "mse": 0.2, "mae": 0.3, "crps": 0.25, "pi80_coverage": 0.7},
        {"method": "naive", "kind": "baseline", "mse": 0.4, "mae": 0.5, "crps": 0.5, "pi80_coverage": None}]}))
    run = _run(tmp_path, "r1", "time")
    write_result(run / "benchmarks" / "cache-1" / "results.json", stamp("benchmark", {"by_batch": [], "matched": [
        {"solver": "euler_maruyama", "steps": 100, "rows": [
            {"method": "uncached", "name": "uncached", "steps": 100, "time_per_sample_s": 2.0, "rel_l2": 0.0, "context_fid": 0.9},
            {"method": "e2crf", "name": "e2crf", "steps": 100, "time_per_sample_s": 0.7, "rel_l2": 0.1}]}]}))
    write_result(run / "benchmarks" / "cache-0" / "results.json", stamp("benchmark", {"by_batch": [], "pareto": [  # older layout
        {"method": "uncached", "steps": 100, "time_per_sample_s": 2.0, "swd": 0.1, "rel_l2": 0.0}]}))
    write_result(run / "benchmarks" / "ablation-1" / "results.json", stamp("ablation", {"batch_size": 4, "variants": [
        {"variant": "baseline", "time_s": 8.0, "swd": 0.1}, {"variant": "no_event", "time_s": 4.0, "swd": 0.2}]}))
    found = find_results(tmp_path)
    table = forecast_table(found)
    assert [(r["method"], r["crps"], r["pi80_coverage"]) for r in table] == [("timediff[dpmpp_10]", 0.25, 0.7), ("naive", 0.5, None)]
    by_kind = {(r.kind, r.path.parent.name): r for r in found}
    new = pareto_points(by_kind["benchmark", "cache-1"])
    assert [(p["panel"], p["group"], p["time_per_sample_s"], p["rel_l2"]) for p in new] == [
        ("euler_maruyama 100 steps", "uncached", 2.0, 0.0), ("euler_maruyama 100 steps", "e2crf", 0.7, 0.1)]
    assert new[0]["context_fid"] == 0.9 and "context_fid" not in new[1]
    assert pareto_points(by_kind["benchmark", "cache-0"]) == [{"panel": "pareto", "group": "uncached", "label": "uncached 100",
                                                               "time_per_sample_s": 2.0, "rel_l2": 0.0, "swd": 0.1}]
    assert [(p["group"], p["time_per_sample_s"]) for p in pareto_points(by_kind["ablation", "ablation-1"])] == [("uncached", 2.0), ("ablation", 1.0)]
    assert "euler_maruyama 100 steps: cache vs fewer steps (rel. L2 to uncached)" in benchmark_sections(by_kind["benchmark", "cache-1"])
    with pytest.raises(ResultFileError, match="not a cache benchmark"):
        pareto_points(next(r for r in found if r.kind == "forecast"))

    with pytest.raises(FileNotFoundError, match="python cmd/sample.py model_id=r1"):
        load_samples(tmp_path, "r1")
    write_result(run / "samples" / "s1" / "samples.npy", np.ones((3, 4, 2), np.float32))
    write_result(run / "samples" / "s1" / "real.npy", np.zeros((5, 4, 2), np.float32))
    got = load_samples(tmp_path, "r1")
    assert got["generated"].shape == (3, 4, 2) and got["real"].shape == (5, 4, 2) and got["sample_dir"].name == "s1"
