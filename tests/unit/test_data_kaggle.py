"""Kaggle-backed datamodules: parsing of fixture files in each archive's real layout, and the Kaggle boundary."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tsdiff.data import (
    DataFormatError,
    DatasetUnavailableError,
    ECGDataModule,
    MIMICIIIDataModule,
    NASADataModule,
    NASDAQDataModule,
    USDroughtsDataModule,
)
from tsdiff.data.kaggle import download_kaggle_dataset, load_kaggle_api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _ready(dm):
    dm.prepare_data()
    dm.setup()
    return dm


class _Poison(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import kaggle` behave like kaggle without credentials: SystemExit(1)."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "kaggle" or fullname.startswith("kaggle."):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise SystemExit(1)


@pytest.fixture
def poisoned_kaggle(monkeypatch):
    for mod in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, mod)
    finder = _Poison()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    return finder


# ---------------------------------------------------------------- parsing of the real formats
def test_ecg_fixture_parsing_and_fixed_test_file(tmp_path):
    dm = _ready(ECGDataModule(data_dir=str(_copy("ecg", tmp_path)), seed=1))
    assert dm.seq_len == 187 and dm.n_channels == 1
    assert [len(dm.train_array(s)) for s in ("train", "val", "test")] == [10, 2, 4]
    raw_test = np.loadtxt(FIXTURES / "ecg" / "mitbih_test.csv", delimiter=",")[:, :187]
    np.testing.assert_allclose(dm.scaler.inverse_transform(dm.train_array("test"))[..., 0], raw_test, atol=1e-5)
    assert len(dm.labels["test"]) == 4  # first row is a beat, not a header
    smooth = _ready(ECGDataModule(data_dir=str(tmp_path / "ecg"), seed=1, smoother_width=3.0))
    assert smooth.train_array("test").shape == (4, 187, 1)
    assert not np.allclose(smooth.train_array("test"), dm.train_array("test"))


def test_ecg_wrong_column_count(tmp_path):
    d = _copy("ecg", tmp_path)
    np.savetxt(d / "mitbih_train.csv", np.ones((3, 100)), delimiter=",")
    with pytest.raises(DataFormatError, match="expected 188, found 100"):
        _ready(ECGDataModule(data_dir=str(d)))


def test_nasdaq_fixture_reference_filters(tmp_path):
    dm = _ready(NASDAQDataModule(data_dir=str(_copy("nasdaq", tmp_path)), cache=False))
    # AAA..DDD cover 2019 fully; EEE misses a day, FFF is listed too late.
    assert sum(len(dm.train_array(s)) for s in ("train", "val", "test")) == 4
    assert dm.train_array().shape[1:] == (252, 5)
    assert dm.channel_names == ["Adj Close", "Close", "High", "Low", "Open"]
    short = _ready(NASDAQDataModule(data_dir=str(tmp_path / "nasdaq"), seq_len=63, cache=True))
    assert short.train_array().shape[1:] == (63, 5) and len(short.train_array()) == 4 * len(dm.train_array())
    assert (tmp_path / "nasdaq" / "tsdiff_cache_nasdaq.npz").is_file()


def test_nasdaq_wrong_columns(tmp_path):
    d = _copy("nasdaq", tmp_path)
    (d / "stocks" / "AAA.csv").write_text("Date,Close\n2019-01-02,1.0\n")
    with pytest.raises(DataFormatError, match="AAA.csv: wrong number of columns: expected 7, found 2"):
        _ready(NASDAQDataModule(data_dir=str(d), cache=False))


@pytest.mark.parametrize("sub,shape", [("charge", (251, 4)), ("discharge", (134, 5))])
def test_nasa_fixture_binning(tmp_path, sub, shape):
    dm = _ready(NASADataModule(data_dir=str(_copy("nasa", tmp_path)), subdataset=sub, cache=False))
    assert dm.seq_len == shape[0] and dm.n_channels == shape[1]
    assert sum(len(dm.train_array(s)) for s in ("train", "val", "test")) == 3  # the 3000 s charge is too short


def test_nasa_bad_subdataset():
    with pytest.raises(ValueError, match="charge or discharge"):
        NASADataModule(subdataset="impedance")


def test_usdroughts_fixture(tmp_path):
    dm = _ready(USDroughtsDataModule(data_dir=str(_copy("usdroughts", tmp_path)), cache=False, chunksize=500))
    assert dm.train_array().shape[1:] == (365, 13)
    assert sum(len(dm.train_array(s)) for s in ("train", "val", "test")) == 3  # 4th county is incomplete
    assert "score" not in dm.channel_names and "TS" not in dm.channel_names


def test_usdroughts_nan_is_reported(tmp_path):
    d = _copy("usdroughts", tmp_path)
    f = d / "train_timeseries" / "train_timeseries.csv"
    lines = f.read_text().splitlines()
    cells = lines[10].split(",")
    cells[2] = ""  # PRECTOT on a 2011 day
    lines[10] = ",".join(cells)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"1 missing/NaN value\(s\) \(per column: PRECTOT: 1\)"):
        _ready(USDroughtsDataModule(data_dir=str(d), cache=False))


def test_collection_split_deterministic_per_seed(tmp_path):
    d = str(_copy("ecg", tmp_path))
    a, b, c = (_ready(ECGDataModule(data_dir=d, seed=s)) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.train_array("val"), b.train_array("val"))
    assert not np.array_equal(a.train_array("val"), c.train_array("val"))


def test_too_short_collection(tmp_path):
    with pytest.raises(DataFormatError, match=r"187 time steps, too short for the requested seq_len=200"):
        _ready(ECGDataModule(data_dir=str(_copy("ecg", tmp_path)), seq_len=200))


# ---------------------------------------------------------------- the Kaggle boundary
def test_no_credentials_gives_both_remedies(tmp_path, poisoned_kaggle):
    dm = ECGDataModule(data_dir=str(tmp_path / "ecg"))
    with pytest.raises(DatasetUnavailableError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "kaggle.json" in msg and "KAGGLE_USERNAME" in msg and "KAGGLE_KEY" in msg
    assert str((tmp_path / "ecg").resolve()) in msg and "mitbih_train.csv" in msg and "mitbih_test.csv" in msg
    assert "exited with status 1" in msg


def test_authenticate_exit_is_caught(monkeypatch):
    class Api:
        def authenticate(self):
            raise SystemExit(1)

    fake = type(sys)("kaggle")
    fake.api = Api()
    monkeypatch.setitem(sys.modules, "kaggle", fake)
    with pytest.raises(DatasetUnavailableError, match="no credentials"):
        load_kaggle_api("a/b", "data/x", ["f.csv"])


def test_local_copy_never_imports_kaggle(tmp_path, poisoned_kaggle):
    dm = ECGDataModule(data_dir=str(_copy("ecg", tmp_path)))
    dm.prepare_data()
    dm.setup()
    assert "kaggle" not in sys.modules
    assert len(dm.train_array()) == 10


def test_setup_without_prepare_explains(tmp_path, poisoned_kaggle):
    with pytest.raises(DatasetUnavailableError, match="call prepare_data"):
        NASDAQDataModule(data_dir=str(tmp_path / "nope")).setup()
    assert "kaggle" not in sys.modules


def test_fake_api_download_lands_files(tmp_path, monkeypatch):
    archive = tmp_path / "heartbeat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("mitbih_train.csv", "mitbih_test.csv"):
            zf.write(FIXTURES / "ecg" / name, name)
        zf.writestr("ptbdb_normal.csv", "0.1,0\n")
    calls = []

    class FakeApi:
        def authenticate(self):
            calls.append("auth")

        def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
            calls.append((dataset, path, unzip))
            assert unzip
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(path)

    fake = type(sys)("kaggle")
    fake.api = FakeApi()
    monkeypatch.setitem(sys.modules, "kaggle", fake)
    data_dir = tmp_path / "ecg"
    dm = ECGDataModule(data_dir=str(data_dir))
    dm.prepare_data()
    assert calls == ["auth", ("shayanfazeli/heartbeat", str(data_dir), True)]
    assert (data_dir / "mitbih_train.csv").is_file()
    dm.setup()
    assert dm.train_array("test").shape == (4, 187, 1)
    dm.prepare_data()  # second call: local copy present, no new download
    assert len(calls) == 2


def test_download_with_unexpected_layout(tmp_path):
    class EmptyApi:
        def dataset_download_files(self, dataset, path=None, unzip=False):
            Path(path, "other.csv").write_text("1\n")

    with pytest.raises(DatasetUnavailableError, match="archive layout may have changed"):
        download_kaggle_dataset("shayanfazeli/heartbeat", tmp_path / "ecg", ["mitbih_train.csv"], api=EmptyApi())


def test_mimiciii_never_downloads_and_says_how(tmp_path, poisoned_kaggle):
    dm = MIMICIIIDataModule(data_dir=str(tmp_path / "mimiciii"))
    with pytest.raises(DatasetUnavailableError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "PhysioNet" in msg and "MIMIC-Extract" in msg and "all_hourly_data.h5" in msg
    assert str((tmp_path / "mimiciii").resolve()) in msg
    assert "kaggle" not in sys.modules


def test_mimic_extract_tables_to_arrays():
    import pandas as pd

    from tsdiff.data.datamodules import mimic_extract_to_arrays

    ids = [(s, 100 + s, 1000 + s) for s in range(5)]
    statics = pd.DataFrame({"max_hours": [40, 40, 40, 40, 10]},
                           index=pd.MultiIndex.from_tuples(ids, names=["subject_id", "hadm_id", "icustay_id"]))
    rows = [(*i, h) for i in ids for h in range(30)]
    index = pd.MultiIndex.from_tuples(rows, names=["subject_id", "hadm_id", "icustay_id", "hours_in"])
    columns = pd.MultiIndex.from_product([["hr", "sbp"], ["count", "mean"]], names=["LEVEL2", "Aggregation Function"])
    values = np.random.default_rng(0).normal(size=(len(rows), 4))
    values[3, 1] = np.nan  # a missing heart rate: forward-filled
    train, test, names = mimic_extract_to_arrays(statics, pd.DataFrame(values, index=index, columns=columns), seed=0)
    assert names == ["hr", "sbp"]
    assert train.shape == (3, 24, 2) and test.shape == (1, 24, 2)  # 4 long stays, 80/20 by subject
    assert np.isfinite(train).all() and np.isfinite(test).all()
