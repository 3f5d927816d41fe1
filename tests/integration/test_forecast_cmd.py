"""End to end: `cmd/train.py model=timediff` then `cmd/forecast.py model_id=...` on the bundled stocks."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose_cfg as _compose
from tsdiff.data.errors import DataFormatError

TINY = [
    "datamodule=forecast_stocks",
    "datamodule.lookback=16",
    "datamodule.horizon=4",
    "model.hidden=8",
    "model.cond_hidden=8",
    "model.step_sinusoid_dim=8",
    "model.step_hidden_dim=8",
    "model.ar_pretrain_epochs=1",
]



def test_train_then_forecast_table(tmp_path):
    from tsdiff.tasks import forecast, train

    runs = tmp_path / "runs"
    trained = train.run(_compose("train", ["model=timediff", *TINY, "trainer=fast", "trainer.max_epochs=1",
                                           "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                                           "trainer.enable_progress_bar=false", "logger=none", f"runs_dir={runs}"]))
    result = forecast.run(_compose("forecast", [
        *TINY, f"runs_dir={runs}", f"model_id={trained['run_id']}", f"output_dir={tmp_path / 'out'}",
        "eval.max_windows=3", "eval.num_samples=2", "eval.solvers.dpmpp_20.steps=5", "eval.solvers.dpmpp_10=null",
        "eval.calibration.solver=dpmpp_20", "eval.calibration.max_windows=4", "eval.fan_chart.solver=dpmpp_20",
        "baselines.ar.epochs=1", "baselines.dlinear.epochs=1", "baselines.dlinear_gauss.base.epochs=1",
        "timing.horizons=[8]", "timing.repeats=1", "timing.num_samples=2",
    ]))
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["timediff[dpmpp_20]", "timediff[dpmpp_20]+gauss", "timediff[dpmpp_20]+spread_cal",
                       "timediff[ddpm_100]", "naive", "seasonal_naive(m=5)", "ar", "dlinear", "dlinear+gauss",
                       "seasonal_naive(m=5)+boot"]
    assert result["timediff"]["model_id"] == trained["run_id"] and result["n_windows"] == 3
    assert not result["timediff"]["channel_independent"]  # model=timediff: the paper's multivariate model
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("mse", "mae", "crps", "ms_per_window"))
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["timediff[dpmpp_20]+gauss"]["crps_skill"] == 0.0 and "crps_skill" in rows["timediff[dpmpp_20]"]
    for name in ("timediff[dpmpp_20]", "timediff[dpmpp_20]+spread_cal", "dlinear+gauss", "seasonal_naive(m=5)+boot"):
        assert all(0 <= rows[name][f"pi{lv}_coverage"] <= 1 for lv in (50, 80, 95))
        assert sum(rows[name]["pit_hist"]) == pytest.approx(1.0) and 0 <= rows[name]["pit_flatness"] <= 1
    assert rows["dlinear+gauss"]["mse"] == pytest.approx(rows["dlinear"]["mse"])  # same seed, same DLinear
    fan = result["fan_chart"]
    assert fan["method"] == "timediff[dpmpp_20]" and len(fan["truth"]) == 3 and len(fan["median"][0]) == 4
    assert set(fan["bands"]) == {"50", "80", "95"} and (tmp_path / "out" / "fanchart.png").is_file()
    nfe = {r["method"]: r["nfe"] for r in result["rows"] if r["kind"] == "timediff"}
    assert nfe == {"timediff[dpmpp_20]": 5, "timediff[ddpm_100]": 100}
    assert result["timing"][0]["horizon"] == 8 and result["timing"][0]["ddpm_100_ratio_to_ddpm_100"] == 1.0
    saved = json.loads((tmp_path / "out" / "forecast.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))


def test_wrong_csv_layout_stops_the_command(tmp_path):
    from tsdiff.tasks import forecast

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4\n")
    cfg = _compose("forecast", ["datamodule=forecast_csv", f"datamodule.data_dir={tmp_path}", "datamodule.filename=bad.csv",
                                f"runs_dir={tmp_path / 'runs'}"])
    with pytest.raises(DataFormatError, match="must hold timestamps"):
        forecast.run(cfg)


def test_in_process_training_keeps_the_weights_of_the_best_val_forecast(tmp_path):
    from tsdiff.tasks import forecast

    result = forecast.run(_compose("forecast", [
        *TINY, f"runs_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", "trainer.max_epochs=2",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "model.val_forecast_windows=4",
        "eval.max_windows=3", "eval.num_samples=2", "eval.solvers.dpmpp_20=null", "eval.solvers.ddpm_100=null",
        "eval.calibration.solver=null", "eval.fan_chart.solver=null",
        "baselines.ar.epochs=1", "baselines.dlinear=null", "baselines.naive=null", "baselines.dlinear_gauss=null",
        "baselines.seasonal_naive_boot=null",
    ]))
    info = result["timediff"]
    assert info["source"] == "trained_here" and info["selected_by"] == "val/forecast_crps"
    assert info["channel_independent"]  # forecast's default model=timediff_ci
    assert math.isfinite(info["selected_value"]) and info["optimizer_steps"] == 6
    assert [r["method"] for r in result["rows"]] == ["timediff[dpmpp_10]", "seasonal_naive(m=5)", "ar"]


def _ett_csv(tmp_path):
    """The shared ETTh1.csv when the checkout sits next to it (../shared/data), else a generated file in the
    same layout (date, six load columns, OT; hourly)."""
    import numpy as np
    import pandas as pd
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for base in (root.parent, root.parent.parent):
        if (base / "shared" / "data" / "ETTh1.csv").is_file():
            return base / "shared" / "data"
    t = np.arange(600)
    g = np.random.default_rng(0)
    cols = {c: np.sin(2 * np.pi * t / 24 + i) + 0.1 * g.standard_normal(600)
            for i, c in enumerate(["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"])}
    pd.DataFrame({"date": pd.date_range("2016-07-01", periods=600, freq="h"), **cols}).to_csv(tmp_path / "ETTh1.csv", index=False)
    return tmp_path


def test_ett_layout_csv_runs_the_probabilistic_table(tmp_path):
    from tsdiff.tasks import forecast

    data_dir = _ett_csv(tmp_path)
    result = forecast.run(_compose("forecast", [
        "+experiment=timediff_etth1", f"datamodule.data_dir={data_dir}", "datamodule.lookback=24", "datamodule.horizon=12",
        "model.hidden=8", "model.cond_hidden=8", "model.step_sinusoid_dim=8", "model.step_hidden_dim=8",
        "model.ar_pretrain_epochs=1", "model.val_forecast_windows=4", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", f"runs_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}",
        "eval.max_windows=4", "eval.num_samples=4", "eval.solvers.dpmpp_20=null", "eval.solvers.ddpm_100=null",
        "eval.calibration.max_windows=4", "baselines.ar.epochs=1", "baselines.dlinear.epochs=1",
        "baselines.dlinear_gauss.base.epochs=1", "baselines.dlinear_gauss.calibration_windows=8",
    ]))
    assert result["dataset"] == "etth1" and result["n_channels"] == 7 and result["n_windows"] == 4
    assert result["antithetic"] and result["num_samples"] == 4  # the default: samples start in (x^K, -x^K) pairs
    assert result["fan_chart"]["channel_name"] == "OT"
    rows = {r["method"]: r for r in result["rows"]}
    assert {"timediff[dpmpp_10]", "timediff[dpmpp_10]+gauss", "dlinear+gauss", "seasonal_naive(m=24)+boot"} <= set(rows)
    assert all(math.isfinite(r["crps"]) for r in rows.values())


def test_a_step_budget_below_one_epoch_trains_and_scores(tmp_path):
    """trainer.max_steps below an epoch ends before the first validation: early stopping has nothing to check
    yet, which must not stop the command."""
    from tsdiff.tasks import forecast

    result = forecast.run(_compose("forecast", [
        *TINY, f"runs_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", "trainer.max_epochs=-1",
        "trainer.max_steps=1", "model.val_forecast_windows=4",
        "eval.max_windows=3", "eval.num_samples=2", "eval.solvers.dpmpp_20=null", "eval.solvers.ddpm_100=null",
        "eval.calibration.solver=null", "eval.fan_chart.solver=null",
        "baselines.ar.epochs=1", "baselines.dlinear=null", "baselines.naive=null", "baselines.dlinear_gauss=null",
        "baselines.seasonal_naive_boot=null",
    ]))
    assert result["timediff"]["optimizer_steps"] == 1
    assert math.isfinite(result["rows"][0]["mse"])


@pytest.mark.parametrize("command", ["forecast", "train"])
def test_etth1_experiment_carries_the_settings_chosen_on_val(command):
    """The ETTh1 numbers of docs/timediff.md come from these settings (each chosen on the val split): both
    commands must train the same 300-step, fixed least-squares-AR model, not the 6-epoch default budget."""
    cfg = _compose(command, ["model=timediff_ci", "+experiment=timediff_etth1"])
    assert (cfg.datamodule.lookback, cfg.datamodule.horizon) == (336, 168)
    assert cfg.model.ar_fit == "ridge" and cfg.model.freeze_ar is True
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (3, 100)
