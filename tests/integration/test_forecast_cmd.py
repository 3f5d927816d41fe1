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
        "baselines.ar.epochs=1", "baselines.dlinear.epochs=1",
        "timing.horizons=[8]", "timing.repeats=1", "timing.num_samples=2",
    ]))
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["timediff[dpmpp_20]", "timediff[ddpm_100]", "naive", "seasonal_naive(m=5)", "ar", "dlinear"]
    assert result["timediff"]["model_id"] == trained["run_id"] and result["n_windows"] == 3
    assert not result["timediff"]["channel_independent"]  # model=timediff: the paper's multivariate model
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("mse", "mae", "crps", "ms_per_window"))
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
        "baselines.ar.epochs=1", "baselines.dlinear=null", "baselines.naive=null",
    ]))
    info = result["timediff"]
    assert info["source"] == "trained_here" and info["selected_by"] == "val/forecast_mse"
    assert info["channel_independent"]  # forecast's default model=timediff_ci
    assert math.isfinite(info["selected_value"]) and info["optimizer_steps"] == 6
    assert [r["method"] for r in result["rows"]] == ["timediff[dpmpp_10]", "seasonal_naive(m=5)", "ar"]
