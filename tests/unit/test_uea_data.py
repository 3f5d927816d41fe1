"""The UCR/UEA .ts reader, the length policies, labels through the split, and the class-coverage metric."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from tsdiff.data import JapaneseVowelsDataModule, UEADataModule
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.uea import parse_ts, to_length
from tsdiff.metrics.class_coverage import (
    class_coverage,
    class_histogram,
    total_variation,
)

HEADER = "# comment\n@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n"


def _write(folder, name, lines, gz=False):
    text = HEADER + "\n".join(lines) + "\n"
    for part, rows in (("TRAIN", lines), ("TEST", lines[:2])):
        body = (HEADER + "\n".join(rows) + "\n").encode()
        path = folder / f"{name}_{part}.ts{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(body) if gz else body)
    return text


def _lines(n=20):
    out = []
    for i in range(n):
        length = 4 + i % 3
        label = "a" if i % 2 else "b"
        ch0 = ",".join(str(i + 0.1 * t) for t in range(length))
        ch1 = ",".join(str(-i - t) for t in range(length))
        out.append(f"{ch0}:{ch1}:{label}")
    return out


def test_parse_ts_variable_length_and_labels():
    series, labels, classes = parse_ts(HEADER + "1,2,3:4,5,6:b\n7,8:9,10:a\n")
    assert classes == ["a", "b"] and labels.tolist() == [1, 0]
    assert series[0].shape == (3, 2) and series[1].tolist() == [[7, 9], [8, 10]]


@pytest.mark.parametrize("text,match", [
    ("1,2:3,4:a\n", "before the @data"),
    ("@classLabel false\n@data\n1,2:a\n", "classLabel true"),
    (HEADER + "1,2:3,4:c\n", "class 'c'"),
    (HEADER + "1,?:3,4:a\n", "missing values"),
    (HEADER + "1,2,3:3,4:a\n", "different lengths"),
    (HEADER.replace("@timeStamps false", "@timeStamps true") + "1:2:a\n", "timestamped"),
])
def test_parse_ts_bad_input_names_the_problem(text, match):
    with pytest.raises(DataFormatError, match=match):
        parse_ts(text)


def test_length_policies():
    s = np.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(to_length(s, 7, "resample")[[0, -1]], s[[0, -1]])  # ends kept
    np.testing.assert_allclose(to_length(s, 7, "resample")[:, 0], np.linspace(0, 6, 7))
    assert to_length(s, 6, "pad")[-1].tolist() == [6, 7] and to_length(s, 3, "crop").shape == (3, 2)
    with pytest.raises(DataFormatError, match="length_policy=resample"):
        to_length(s, 6, "crop")
    with pytest.raises(ValueError, match="length_policy"):
        to_length(s, 6, "stretch")


@pytest.mark.parametrize("gz", [False, True])
def test_local_uea_files_labels_follow_the_split(tmp_path, gz):
    _write(tmp_path, "Toy", _lines(), gz=gz)
    dm = UEADataModule(data_dir=str(tmp_path), name="Toy", seed=3, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert dm.seq_len == 6 and dm.n_channels == 2 and dm.class_names == ["a", "b"]
    train, val = dm.train_array("train"), dm.train_array("val")
    assert train.shape == (15, 6, 2) and val.shape == (5, 6, 2) and dm.train_array("test").shape == (2, 6, 2)
    # channel 0 starts at the series index i, whose label is a for odd i: recover it through the scaler
    first = dm.scaler.inverse_transform(train)[:, 0, 0].round().astype(int)
    assert (dm.labels("train") == (first % 2 == 0).astype(int)).all()
    merged = UEADataModule(data_dir=str(tmp_path), name="Toy", merge_test=True, test_fraction=0.2)
    merged.setup()
    assert sum(len(merged.labels(s)) for s in ("train", "val", "test")) == 22


def test_missing_local_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="aeon"):
        UEADataModule(data_dir=str(tmp_path), name="Nope").prepare_data()
    with pytest.raises(ValueError, match="stride"):
        UEADataModule(data_dir=str(tmp_path), stride=2)


def test_kaggle_slug_downloads_a_missing_pair_from_any_archive_layout(tmp_path):
    calls = []

    class FakeApi:  # the kaggle.api surface download_kaggle_dataset uses
        def dataset_download_files(self, dataset, path=None, unzip=False):
            calls.append(dataset)
            nested = Path(path) / "Multivariate_ts" / "Toy"
            nested.mkdir(parents=True)
            _write(nested, "Toy", _lines())

    dm = UEADataModule(data_dir=str(tmp_path / "uea"), name="Toy", kaggle_slug="someone/uea-archive")
    dm.acquire(api=FakeApi())
    assert calls == ["someone/uea-archive"]
    dm.setup()
    assert dm.train_array("train").shape[1:] == (6, 2) and dm.class_names == ["a", "b"]
    dm.acquire(api=FakeApi())  # the pair is present now: no second download
    assert len(calls) == 1


def test_kaggle_archive_without_the_set_names_the_slug(tmp_path):
    class WrongArchive:
        def dataset_download_files(self, dataset, path=None, unzip=False):
            Path(path, "Other_TRAIN.ts").write_text(HEADER)

    dm = UEADataModule(data_dir=str(tmp_path), name="Toy", kaggle_slug="someone/other")
    with pytest.raises(DatasetUnavailableError, match="'someone/other' did not contain them"):
        dm.acquire(api=WrongArchive())


def test_bundled_japanese_vowels():
    dm = JapaneseVowelsDataModule(seq_len=29)
    dm.prepare_data()
    dm.setup()
    assert dm.n_channels == 12 and dm.n_classes == 9 and dm.train_array("test").shape == (370, 29, 12)
    assert len(dm.labels("train")) + len(dm.labels("val")) == 270
    assert np.bincount(np.concatenate([dm.labels("train"), dm.labels("val")])).tolist() == [30] * 9


def test_class_coverage_histograms_and_tvd():
    assert total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    np.testing.assert_allclose(class_histogram(np.array([0, 0, 2]), 3), [2 / 3, 0, 1 / 3])
    g = np.random.default_rng(0)
    y = g.integers(0, 2, 80)
    x = (g.normal(size=(80, 8, 1)) * 0.3 + np.where(y == 1, 2.0, -2.0)[:, None, None]).astype(np.float32)
    res = class_coverage(x[:60], y[:60], {"real": x[60:], "one_class": x[y == 1][:20]}, 2, held_out=(x[60:], y[60:]),
                         steps=60)
    assert res["classifier_accuracy"] == 1.0
    assert res["sets"]["real"]["tvd"] < 0.2 and res["sets"]["one_class"]["classes_covered"] == 1
    assert res["sets"]["one_class"]["tvd"] == pytest.approx(1 - res["real"][1], abs=1e-3)


def test_class_coverage_matches_runs_by_data_not_by_seed_or_unset_options():
    from omegaconf import OmegaConf

    from tsdiff.tasks.class_coverage import data_identity

    old = OmegaConf.create({"name": "BasicMotions", "merge_test": True, "seed": 0})
    new = OmegaConf.create({"name": "BasicMotions", "merge_test": True, "seed": 2, "kaggle_slug": None})
    assert data_identity(old) == data_identity(new)  # another split seed, an option added later and left unset
    assert data_identity(old) != data_identity({"name": "BasicMotions", "merge_test": False, "seed": 0})
