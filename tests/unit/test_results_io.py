"""The one write helper for result files (never overwrite, atomic) and the data-quality warnings."""

import json
import os
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from tsdiff.data.quality import DataQualityWarning, check_training_data
from tsdiff.results import free_path, make_dirs, track_new_dirs, write_result


def test_free_name_when_taken_and_nothing_is_overwritten(tmp_path, capsys):
    target = tmp_path / "s.json"
    target.write_text("user's file")
    first = write_result(target, {"a": 1})
    second = write_result(target, {"a": 2})
    assert (first.name, second.name) == ("s-1.json", "s-2.json")
    assert target.read_text() == "user's file"
    assert json.loads(first.read_text()) == {"a": 1} and json.loads(second.read_text()) == {"a": 2}
    out = capsys.readouterr().out
    assert f"{target} already exists" in out and "s-1.json" in out


def test_overwrite_only_when_asked(tmp_path):
    target = tmp_path / "s.json"
    target.write_text("old")
    assert write_result(target, {"b": 1}, overwrite=True) == target
    assert json.loads(target.read_text()) == {"b": 1}


def test_formats_follow_the_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(np.load(write_result(tmp_path / "a.npy", arr), allow_pickle=False), arr)
    cfg = OmegaConf.create({"x": 1, "y": "${x}"})
    assert OmegaConf.load(write_result(tmp_path / "c.yaml", cfg)) == {"x": 1, "y": 1}  # resolved
    assert json.loads(write_result(tmp_path / "n.json", {"v": np.float32(0.5), "a": np.ones(2)}).read_text()) == {
        "v": 0.5, "a": [1.0, 1.0]}
    fig = plt.figure()
    png = write_result(tmp_path / "p.png", fig)
    plt.close(fig)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_object_arrays_are_refused_and_leave_nothing(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        write_result(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_serializer_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "bad.json"
    with pytest.raises(TypeError):
        write_result(target, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_a_name_taken_while_writing_is_not_clobbered(tmp_path, monkeypatch):
    """Between choosing a free name and claiming it another process creates that file: the next name is used."""
    import tsdiff.results.io as results

    target = tmp_path / "r.json"
    real_free = results.free_path
    calls = []

    def racing_free_path(path):
        chosen = real_free(path)
        if not calls:
            chosen.write_text("the other process")
        calls.append(chosen)
        return chosen

    monkeypatch.setattr(results, "free_path", racing_free_path)
    written = write_result(target, {"mine": True})
    assert target.read_text() == "the other process"
    assert json.loads(written.read_text()) == {"mine": True} and written != target


def test_free_path(tmp_path):
    assert free_path(tmp_path / "x.json") == tmp_path / "x.json"
    (tmp_path / "x.json").write_text("")
    (tmp_path / "x-1.json").write_text("")
    assert free_path(tmp_path / "x.json") == tmp_path / "x-2.json"


def test_folders_made_by_a_failing_command_are_removed_if_empty(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    with pytest.raises(RuntimeError):
        with track_new_dirs():
            make_dirs(tmp_path / "a" / "b" / "c")
            make_dirs(tmp_path / "full")
            (tmp_path / "full" / "f.txt").write_text("x")
            raise RuntimeError("fail")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "keep"]
    with track_new_dirs():
        make_dirs(tmp_path / "ok")
    assert (tmp_path / "ok").is_dir()


def test_constant_and_quantized_training_data_warn():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(500, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_training_data(good, np.lib.stride_tricks.sliding_window_view(good, 24, axis=0).transpose(0, 2, 1), "ok") == []
    const = good.copy()
    const[:, 1] = 7.0
    with pytest.warns(DataQualityWarning, match="channel 1 of 'c' is constant"):
        check_training_data(const, None, "c")
    near = good.copy()
    near[:, 2] = 1000.0 + 1e-7 * rng.normal(size=500)
    with pytest.warns(DataQualityWarning, match="channel 2 of 'n' is near-constant"):
        check_training_data(near, None, "n")
    steps = np.repeat(rng.integers(0, 2, size=(25, 1)), 20, axis=0).astype(float) + np.zeros((500, 2))
    windows = np.lib.stride_tricks.sliding_window_view(steps, 24, axis=0).transpose(0, 2, 1)
    with pytest.warns(DataQualityWarning, match="fewer than 3 distinct values"):
        check_training_data(steps, windows, "q")


def test_a_constant_synthetic_series_warns_at_setup(tmp_path):
    from tsdiff.data import SyntheticDataModule

    dm = SyntheticDataModule(data_dir=str(tmp_path), seq_len=12, n_samples=64, n_channels=2, n_components=1)
    dm.load_collection = lambda: (np.zeros((64, 12, 2)), None)  # a constant data set
    with pytest.warns(DataQualityWarning, match="constant"):
        dm.setup("fit")
    assert os.listdir(tmp_path) == []
