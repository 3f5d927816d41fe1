"""``datamodule=npy`` / ``datamodule=csv``: the user's own windows or series, with one-line errors for bad files."""

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tsdiff.data.errors import DataFormatError
from tsdiff.data.local import CSVSeriesDataModule, NpyDataModule


def _dm(cls, **kw):
    dm = cls(**kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_npy_windows_are_a_collection_split_at_random(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 12, 3)).astype(np.float32)
    np.save(tmp_path / "w.npy", x)
    dm = _dm(NpyDataModule, path=str(tmp_path / "w.npy"), seed=1)
    sizes = [len(dm.train_array(s)) for s in ("train", "val", "test")]
    assert sizes == [40, 5, 5] and dm.seq_len == 12 and dm.n_channels == 3
    back = dm.scaler.inverse_transform(np.concatenate([dm.train_array(s) for s in ("train", "val", "test")]))
    assert np.allclose(np.sort(back.ravel()), np.sort(x.ravel()), atol=1e-5)  # every window once, none invented
    assert next(iter(dm.train_dataloader()))["x"].shape == (40, 12, 3)


def test_npy_series_and_csv_series_give_the_same_windows(tmp_path):
    t = np.arange(300, dtype=np.float32)
    series = np.stack([np.sin(t / 5), np.cos(t / 7)], axis=1)
    np.save(tmp_path / "s.npy", series)
    header = "date,a,b\n" + "".join(f"2020-01-{i % 28 + 1:02d},{a},{b}\n" for i, (a, b) in enumerate(series))
    (tmp_path / "s.csv").write_text(header)
    kw = dict(seq_len=16, split="chronological", stride=1)
    npy = _dm(NpyDataModule, path=str(tmp_path / "s.npy"), **kw)
    csv = _dm(CSVSeriesDataModule, path=str(tmp_path / "s.csv"), time_column="date", **kw)
    assert csv.channel_names == ["a", "b"] and npy.train_array().shape == (240 - 16 + 1, 16, 2)
    np.testing.assert_allclose(npy.train_array("test"), csv.train_array("test"), atol=1e-5)
    one = _dm(CSVSeriesDataModule, path=str(tmp_path / "s.csv"), columns=["b"], **kw)
    assert one.n_channels == 1


def test_hydra_configs_compose(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((20, 8, 1), np.float32) + np.arange(8)[None, :, None])
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "datamodule" / "npy.yaml")
    cfg.path, cfg.seed = str(tmp_path / "w.npy"), 0
    dm = instantiate(cfg)
    assert isinstance(dm, NpyDataModule) and dm.seq_len == 8 and dm.layout == "collection"


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (np.zeros((2, 3, 4, 5)), r"shape \(2, 3, 4, 5\) is not"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), r"1 NaN/inf value\(s\) \(first at index \(0, 1\)\)"),
    (np.array(["a", "b"]), "is not real numbers"),
])
def test_npy_errors_name_the_problem_and_the_fix(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises((DataFormatError, FileNotFoundError), match=match):
        NpyDataModule(path=str(path))


def test_csv_errors_name_the_problem_and_the_fix(tmp_path):
    (tmp_path / "d.csv").write_text("date,a\n2020-01-01,1\n2020-01-02,\n")
    with pytest.raises(DataFormatError, match="non-numeric.*time_column"):
        CSVSeriesDataModule(path=str(tmp_path / "d.csv"), seq_len=1)
    with pytest.raises(DataFormatError, match="1 missing/NaN"):
        CSVSeriesDataModule(path=str(tmp_path / "d.csv"), time_column="date", seq_len=1)
    with pytest.raises(DataFormatError, match=r"column\(s\) \['c'\] not in the header"):
        CSVSeriesDataModule(path=str(tmp_path / "d.csv"), columns=["c"])
    with pytest.raises(DataFormatError, match="is not a .csv file; use datamodule=npy"):
        np.save(tmp_path / "x.npy", np.zeros(3))
        CSVSeriesDataModule(path=str(tmp_path / "x.npy"))
    (tmp_path / "ok.csv").write_text("a\n1\n2\n3\n")
    with pytest.raises(DataFormatError, match="3 rows, fewer than seq_len=24"):
        CSVSeriesDataModule(path=str(tmp_path / "ok.csv"))
    with pytest.raises(ValueError, match="pass datamodule.path"):
        CSVSeriesDataModule()
