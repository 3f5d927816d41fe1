"""ForecastingDataModule: the CSV layout, chronological splits, train-only scaling, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.forecasting import ForecastingDataModule, read_forecasting_csv, split_borders


def write_csv(path, n: int = 200, n_vars: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, n_vars)).cumsum(axis=0), columns=[f"v{i}" for i in range(n_vars)])
    df.insert(0, "date", pd.date_range("2020-01-01", periods=n, freq="h").astype(str))
    df.to_csv(path, index=False)


def csv_dm(tmp_path, **kw) -> ForecastingDataModule:
    write_csv(tmp_path / "series.csv", n=kw.pop("n", 200))
    args = dict(source="csv", data_dir=str(tmp_path), filename="series.csv", lookback=16, horizon=8, batch_size=4)
    dm = ForecastingDataModule(**{**args, **kw})
    dm.setup()
    return dm


def test_batches_and_model_kwargs(tmp_path):
    dm = csv_dm(tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["lookback"].shape == (4, 16, 3) and batch["future"].shape == (4, 8, 3)
    assert dm.model_kwargs() == {"lookback": 16, "horizon": 8, "n_channels": 3}


def test_chronological_split_targets_never_overlap_and_scaler_uses_train_only(tmp_path):
    dm = csv_dm(tmp_path, split=[0.6, 0.2, 0.2])
    raw, _ = read_forecasting_csv(tmp_path / "series.csv", "t")
    n_train = int(200 * 0.6)
    assert np.allclose(dm.scaler.mean, raw[:n_train].mean(axis=0), atol=1e-4)
    ends = {s: dm.window_starts(s)[[0, -1]] + 16 for s in ("train", "val", "test")}  # first/last target rows
    assert ends["train"][1] + 8 <= ends["val"][0] and ends["val"][1] + 8 <= ends["test"][0]
    assert ends["val"][0] == n_train and ends["test"][1] + 8 == 200


def test_univariate_is_the_last_variable(tmp_path):
    dm = csv_dm(tmp_path, univariate=True)
    assert dm.n_channels == 1 and dm.channel_names == ["v2"]


def test_arrays_subset_is_even_and_deterministic(tmp_path):
    dm = csv_dm(tmp_path)
    lb, fut = dm.arrays("test", max_windows=3)
    assert lb.shape == (3, 16, 3) and fut.shape == (3, 8, 3)
    assert np.array_equal(lb, dm.arrays("test", max_windows=3)[0])


def test_series_shorter_than_lookback_plus_horizon(tmp_path):
    with pytest.raises(DataFormatError, match="lookback \\+ horizon"):
        csv_dm(tmp_path, n=20)
    with pytest.raises(DataFormatError, match="test split"):
        split_borders(100, 16, 8, (0.8, 0.15, 0.05))


@pytest.mark.parametrize(
    "content,match",
    [
        ("v0,v1\n1.0,2.0\n3.0,4.0\n", "first column 'v0' must hold timestamps"),
        ("date\n2020-01-01\n", "date column first and at least one variable"),
        ("date,v0\n2020-01-02,1\n2020-01-01,2\n", "not in increasing order"),
        ("date,v0\n2020-01-01,1\n2020-01-02,abc\n", "non-numeric"),
        ("date,v0\n2020-01-01,1\n2020-01-02,\n", "NaN"),
    ],
)
def test_wrong_csv_layout_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=match):
        read_forecasting_csv(path, str(path))


def test_missing_csv_names_the_fixes_and_downloads_with_a_slug(tmp_path, monkeypatch):
    dm = ForecastingDataModule(source="csv", data_dir=str(tmp_path), filename="ETTh1.csv", lookback=16, horizon=8)
    with pytest.raises(DatasetUnavailableError, match="kaggle_slug"):
        dm.prepare_data()
    calls = []

    def fake_download(slug, data_dir, expected):
        calls.append((slug, expected))
        write_csv(tmp_path / "ETTh1.csv")

    monkeypatch.setattr("tsdiff.data.forecasting.download_kaggle_dataset", fake_download)
    dm = ForecastingDataModule(source="csv", data_dir=str(tmp_path), filename="ETTh1.csv", kaggle_slug="someone/ett",
                               lookback=16, horizon=8)
    dm.prepare_data()
    dm.setup()
    assert calls == [("someone/ett", ["ETTh1.csv"])] and dm.n_channels == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="summing to 1"):
        ForecastingDataModule(split=[0.7, 0.2, 0.2])
    with pytest.raises(ValueError, match="source"):
        ForecastingDataModule(source="ettx")
    with pytest.raises(ValueError, match="filename"):
        ForecastingDataModule(source="csv")


def test_bundled_stocks_offline():
    dm = ForecastingDataModule(source="stocks", lookback=96, horizon=14)
    assert dm.model_kwargs() == {"lookback": 96, "horizon": 14, "n_channels": 6}
    assert dm.channel_names[-1] == "Volume"
