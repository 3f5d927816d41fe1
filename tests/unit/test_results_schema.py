"""The versioned result layout (tsdiff.results.schema) and the readers the notebook uses (tsdiff.results.tables)."""

import json

import pytest

from tsdiff.results import (
    SCHEMA_VERSION,
    ResultFileError,
    benchmark_sections,
    evaluation_rows,
    find_results,
    forecast_rows,
    quality_rows,
    read_result,
    sample_rows,
    stamp,
    write_result,
)

SAMPLE = {
    "run_id": "r1",
    "num_samples": 8,
    "num_diffusion_steps": 10,
    "sampling": {"samples_per_s": 12.5},
    "quality": {
        "sets": {
            "model": {"n": 8, "context_fid": {"mean": 0.05, "ci95": 0.01, "runs": [0.04, 0.06]},
                      "discriminative": {"mean": 0.03, "ci95": 0.02, "runs": [0.02, 0.04]}},
            "gaussian": {"n": 8, "context_fid": {"mean": 0.14, "ci95": 0.1, "runs": [0.1, 0.18]},
                         "discriminative": {"mean": None, "ci95": None, "runs": []}},
        },
        "beats_gaussian": {"context_fid": True, "discriminative": False},
    },
    "metrics": {"model": {"sliced_wasserstein": 0.5}, "gaussian": {"sliced_wasserstein": 0.4}},
}


def _run(tmp_path, run_id="r1"):
    run = tmp_path / run_id
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model_target": "tsdiff.models.score_models.ScoreModule",
                                              "datamodule_target": "tsdiff.data.StocksDataModule"}))
    return run


def test_stamp_wraps_the_payload_in_the_versioned_envelope_and_checks_required_keys():
    out = stamp("sample", SAMPLE)
    assert out["schema"] == "tsdiff.result" and out["schema_version"] == SCHEMA_VERSION and out["kind"] == "sample"
    assert out["run_id"] == "r1" and out["created"].endswith("Z") and out["quality"] == SAMPLE["quality"]
    assert "schema" not in SAMPLE  # the payload is not modified
    with pytest.raises(ValueError, match="needs by_batch"):
        stamp("benchmark", {"variants": []})
    with pytest.raises(ValueError, match="kind 'samples' is not one of"):
        stamp("samples", SAMPLE)


def test_read_result_round_trip_and_clear_errors(tmp_path):
    path = write_result(tmp_path / "m.json", stamp("sample", SAMPLE))
    res = read_result(path)
    assert (res.kind, res.schema_version, res.run_id) == ("sample", SCHEMA_VERSION, "r1")
    assert res["quality"]["sets"]["model"]["context_fid"]["mean"] == 0.05

    newer = dict(stamp("sample", SAMPLE), schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ResultFileError, match="newer than this tsdiff reads.*upgrade tsdiff"):
        read_result(write_result(tmp_path / "new.json", newer))
    damaged = {k: v for k, v in stamp("sample", SAMPLE).items() if k != "metrics"}
    with pytest.raises(ResultFileError, match="lacks metrics"):
        read_result(write_result(tmp_path / "damaged.json", damaged))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultFileError, match="not valid JSON"):
        read_result(tmp_path / "bad.json")
    with pytest.raises(ResultFileError, match="does not exist"):
        read_result(tmp_path / "missing.json")
    with pytest.raises(ResultFileError, match="not a tsdiff result"):
        read_result(write_result(tmp_path / "other.json", {"hello": 1}))


def test_files_from_before_the_schema_are_read_as_version_0(tmp_path):
    legacy = write_result(tmp_path / "metrics.json", SAMPLE)  # no envelope
    res = read_result(legacy)
    assert (res.kind, res.schema_version) == ("sample", 0)
    assert read_result(write_result(tmp_path / "results.json", {"variants": [{"variant": "full"}]})).kind == "ablation"


def test_find_results_and_the_notebook_tables(tmp_path):
    run = _run(tmp_path)
    write_result(run / "samples" / "s1" / "metrics.json", stamp("sample", SAMPLE))
    write_result(run / "samples" / "s1" / "evaluation.json",
                 stamp("evaluation", {"source": {"model_id": "r1"}, "mode": "fast",
                                      "results": {"context_fid": {"mean": 0.1, "ci95": 0.02, "runs": [0.1, 0.1], "seconds": 1.0}}}))
    write_result(run / "benchmarks" / "cache-1" / "results.json",
                 stamp("benchmark", {"by_batch": [{"batch": 1, "speedup": 1.7}], "pareto": [
                     {"method": "b", "time_per_sample_s": 2.0}, {"method": "a", "time_per_sample_s": 1.0}]}))
    write_result(run / "benchmarks" / "ablation-1" / "results.json", stamp("ablation", {"variants": [{"variant": "full"}]}))
    write_result(tmp_path / "forecasts" / "f1" / "forecast.json",
                 stamp("forecast", {"dataset": "energy", "horizon": 24, "rows": [{"method": "timediff", "mse": 0.25}]}))
    _run(tmp_path, "r2")  # a run without results

    found = find_results(tmp_path)
    assert sorted(r.kind for r in found) == ["ablation", "benchmark", "evaluation", "forecast", "sample"]
    assert [r.kind for r in find_results(tmp_path, kinds=["sample"], run_ids=["r1"])] == ["sample"]
    assert find_results(tmp_path, run_ids=["r2"]) == []

    q = {row["set"]: row for row in quality_rows(found)}
    assert q["model"]["context_fid"] == 0.05 and q["model"]["context_fid_ci95"] == 0.01
    assert q["model"]["beats_gaussian_context_fid"] is True and q["model"]["beats_gaussian_discriminative"] is False
    assert q["gaussian"]["discriminative"] is None  # not applicable stays None, never 0
    rows = sample_rows(found, tmp_path)
    assert {r["set"] for r in rows} == {"model", "gaussian"} and rows[0]["model"] == "ScoreModule" and rows[0]["data"] == "StocksDataModule"
    assert evaluation_rows(found)[0] == {"run_id": "r1", "file": str(run / "samples" / "s1" / "evaluation.json"),
                                         "metric": "context_fid", "mean": 0.1, "ci95": 0.02, "runs": 2, "seconds": 1.0}
    bench = next(r for r in found if r.kind == "benchmark")
    sections = benchmark_sections(bench)
    assert list(sections) == ["speed-up per batch size", "speed vs quality (time per sample)"]
    assert [r["method"] for r in sections["speed vs quality (time per sample)"]] == ["a", "b"]
    assert forecast_rows(found) == [{"file": str(tmp_path / "forecasts" / "f1" / "forecast.json"), "dataset": "energy",
                                     "horizon": 24, "method": "timediff", "mse": 0.25}]
    with pytest.raises(ResultFileError, match="not a cache benchmark"):
        benchmark_sections(next(r for r in found if r.kind == "sample"))
    with pytest.raises(ValueError, match="unknown result kind"):
        find_results(tmp_path, kinds=["samples"])
