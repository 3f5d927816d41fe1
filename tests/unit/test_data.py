"""Bundled, synthetic and generic behaviour of tsdiff.data (splits, scaler, validation, configs)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdiff.data import (
    DataFormatError,
    EnergyDataModule,
    Scaler,
    StocksDataModule,
    SyntheticDataModule,
    sliding_windows,
    smooth_frequency,
)
from tsdiff.data.csvio import read_numeric_csv
from tsdiff.data.specs import BUNDLED_SHA256, SPECS

REPO = Path(__file__).resolve().parents[2]


def _setup(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_bundled_checksums_match_files_and_json():
    folder = resources.files("tsdiff.data").joinpath("bundled")
    listed = json.loads(folder.joinpath("checksums.json").read_text())
    assert listed == BUNDLED_SHA256
    for name, digest in BUNDLED_SHA256.items():
        assert hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() == digest
    assert "Apache" in folder.joinpath("ATTRIBUTION.md").read_text()


def test_stocks_shapes_and_chronological_split():
    dm = _setup(StocksDataModule(seq_len=24, val_fraction=0.1, test_fraction=0.1))
    n_test = n_val = round(3685 * 0.1)
    n_train = 3685 - n_val - n_test
    assert dm.n_channels == 6 and dm.seq_len == 24
    assert dm.train_array("train").shape == (n_train - 23, 24, 6)
    assert dm.train_array("val").shape == (n_val - 23, 24, 6)
    assert dm.train_array("test").shape == (n_test - 23, 24, 6)
    assert dm.train_array().dtype == np.float32
    # Scaler fitted on the first n_train raw rows only; test uses those statistics.
    raw = np.loadtxt(resources.files("tsdiff.data").joinpath("bundled/stock_data.csv").open(), delimiter=",", skiprows=1)
    np.testing.assert_allclose(dm.scaler.mean, raw[:n_train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(dm.scaler.std, raw[:n_train].std(0), rtol=1e-5)
    first_test_window = (raw[n_train + n_val : n_train + n_val + 24] - raw[:n_train].mean(0)) / raw[:n_train].std(0)
    np.testing.assert_allclose(dm.train_array("test")[0], first_test_window, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dm.scaler.inverse_transform(dm.train_array("test")[0]), raw[n_train + n_val :][:24],
                               rtol=1e-4)
    # Stocks rise over 2004-2019: the test period is far above the train mean after scaling.
    assert dm.train_array("test")[:, :, 0].mean() > 1.0


def test_energy_shape_and_loader_batches():
    dm = _setup(EnergyDataModule(batch_size=8))
    assert dm.n_channels == 28
    total = sum(len(dm.train_array(s)) + 23 for s in ("train", "val", "test"))
    assert total == 19735
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x"} and batch["x"].shape == (8, 24, 28) and batch["x"].dtype == torch.float32


def test_altered_bundled_file_is_refused(monkeypatch):
    monkeypatch.setitem(SPECS["stocks"].bundled_files, "stock_data.csv", "0" * 64)
    with pytest.raises(DataFormatError, match="checksum"):
        StocksDataModule().setup()


def test_bundled_too_short_for_seq_len():
    with pytest.raises(DataFormatError, match=r"seq_len=400.*smaller datamodule.seq_len"):
        StocksDataModule(seq_len=400).setup()


def test_synthetic_seeded_and_standardized_on_train():
    a = _setup(SyntheticDataModule(n_samples=50, seq_len=16, seed=3))
    b = _setup(SyntheticDataModule(n_samples=50, seq_len=16, seed=3))
    c = _setup(SyntheticDataModule(n_samples=50, seq_len=16, seed=4))
    np.testing.assert_array_equal(a.train_array("test"), b.train_array("test"))
    assert not np.allclose(a.train_array("train")[:5], c.train_array("train")[:5])
    tr = a.train_array("train")
    assert tr.shape[1:] == (16, 3)
    np.testing.assert_allclose(tr.reshape(-1, 3).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(tr.reshape(-1, 3).std(0), 1.0, atol=1e-4)
    sizes = [len(a.train_array(s)) for s in ("train", "val", "test")]
    assert sizes == [40, 5, 5]
    b1 = next(iter(a.train_dataloader()))["x"]
    b2 = next(iter(b.train_dataloader()))["x"]
    torch.testing.assert_close(b1, b2)  # batch order is seeded too


def test_collection_splits_disjoint():
    dm = _setup(SyntheticDataModule(n_samples=30, seq_len=8, seed=0, standardize=False))
    rows = {s: {arr.tobytes() for arr in dm.train_array(s)} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert sum(map(len, rows.values())) == 30


def test_scaler_roundtrip_numpy_and_torch():
    x = np.random.default_rng(0).normal(5, 3, size=(10, 7, 2)).astype(np.float32)
    sc = Scaler.fit(x)
    np.testing.assert_allclose(sc.inverse_transform(sc.transform(x)), x, rtol=1e-5)
    t = torch.from_numpy(x)
    torch.testing.assert_close(sc.inverse_transform(sc.transform(t)), t)
    with pytest.raises(ValueError, match="channels"):
        sc.transform(np.zeros((3, 4)))


def test_sliding_windows_positions():
    s = np.arange(10, dtype=np.float32).reshape(10, 1)
    w = sliding_windows(s, 4, 3)
    assert w.shape == (3, 4, 1) and w[:, 0, 0].tolist() == [0, 3, 6]


def test_smooth_frequency_matches_fdiff_packed_kernel():
    # fdiff labels packed (real, imag) DFT coefficients by frequency; with a very narrow kernel the
    # real and imaginary parts of each frequency are averaged while the mean (DC) is untouched.
    x = np.random.default_rng(0).normal(size=(2, 187, 1))
    y = smooth_frequency(x, 1e-3)
    sx, sy = np.fft.rfft(x, axis=1), np.fft.rfft(y, axis=1)
    np.testing.assert_allclose(sy[:, 0].real, sx[:, 0].real, atol=1e-4)
    np.testing.assert_allclose(sy[:, 1:].real, sy[:, 1:].imag, atol=1e-4)
    np.testing.assert_allclose(sy[:, 1:].real, (sx[:, 1:].real + sx[:, 1:].imag) / 2, atol=1e-4)
    wide = smooth_frequency(x, 5.0)
    assert wide.shape == x.shape and np.abs(np.diff(wide, axis=1)).mean() < np.abs(np.diff(x, axis=1)).mean()
    with pytest.raises(ValueError, match="smoother_width"):
        smooth_frequency(x, 0.0)


def test_csv_nan_wrong_columns_and_text(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("a,b\n1,2\n,3\n4,\n5,\n")
    with pytest.raises(DataFormatError, match=r"3 missing/NaN.*a: 1, b: 2.*dropna"):
        read_numeric_csv(p, "a.csv")
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataFormatError, match="expected 2, found 3"):
        read_numeric_csv(p, "a.csv", expected_columns=["a", "b"])
    p.write_text("a,b\n1,x\n")
    with pytest.raises(DataFormatError, match="non-numeric"):
        read_numeric_csv(p, "a.csv")


def test_bad_kwargs_are_explained():
    with pytest.raises(ValueError, match="leaves no training"):
        StocksDataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"seq_len=0"):
        StocksDataModule(seq_len=0)
    with pytest.raises(RuntimeError, match="setup"):
        StocksDataModule().train_array()


def test_hydra_configs_instantiate_every_datamodule():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf_dir = REPO / "conf" / "datamodule"
    # forecast_*.yaml configure the forecasting datamodule (tested with TimeDiff); npy/csv read the user's own
    # file (datamodule.path, tests/unit/test_local_data.py)
    names = sorted(p.stem for p in conf_dir.glob("*.yaml") if not p.stem.startswith("forecast_") and p.stem not in ("npy", "csv"))
    assert names == sorted(SPECS)
    for name in names:
        cfg = OmegaConf.merge(OmegaConf.create({"data_root": "data"}),
                              {"datamodule": OmegaConf.load(conf_dir / f"{name}.yaml")})
        dm = instantiate(cfg.datamodule)
        assert dm.dataset_name == name and str(dm.data_dir) == f"data/{name}"


def test_minmax_scaling_maps_the_training_range_to_minus_one_one_and_back():
    from tsdiff.data.windows import Scaler

    x = np.stack([np.linspace(-3.0, 5.0, 50), np.full(50, 2.0)], axis=1)  # second channel constant
    sc = Scaler.fit_kind(x, "minmax")
    z = sc.transform(x)
    assert np.allclose(z[:, 0].min(), -1.0) and np.allclose(z[:, 0].max(), 1.0)
    assert np.allclose(z[:, 1], 0.0)  # a constant channel is only centred, not blown up
    assert np.allclose(sc.inverse_transform(z), x, atol=1e-5)
    with pytest.raises(ValueError, match="scaling='robust'"):
        Scaler.fit_kind(x, "robust")


def test_datamodule_scaling_minmax_option(tmp_path):
    from tsdiff.data import StocksDataModule

    dm = StocksDataModule(data_dir=str(tmp_path), scaling="minmax", split="blocks")
    dm.setup("fit")
    train = dm.train_array("train")
    assert train.min() >= -1.0 - 1e-5 and train.max() <= 1.0 + 1e-5
    assert np.isclose(train.min(), -1.0, atol=1e-4) and np.isclose(train.max(), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="scaling='zscore'"):
        StocksDataModule(data_dir=str(tmp_path), scaling="zscore")
