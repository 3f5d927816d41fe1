"""Finding saved results and turning them into flat rows (what ``notebooks/results.ipynb`` shows).

Rows are plain lists of dicts, so a caller picks its own table library (``pandas.DataFrame(rows)``).
Everything goes through :func:`tsdiff.results.schema.read_result`, so the notebook never hard-codes a
file's layout and a file from another schema version fails with a clear message instead of a KeyError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tsdiff.results.schema import KINDS, Result, ResultFileError, read_result

__all__ = ["find_results", "sample_rows", "quality_rows", "evaluation_rows", "benchmark_sections", "forecast_rows", "run_info",
           "run_config", "run_label", "generation_table", "forecast_table", "pareto_points", "load_samples"]

# where each kind lives inside a run folder
_PATTERNS = {
    "sample": ("samples/*/metrics.json",),
    "evaluation": ("samples/*/evaluation*.json",),
    "benchmark": ("benchmarks/*/results*.json",),  # cache-<id>/ (cmd/benchmark_cache.py)
    "ablation": ("benchmarks/*/results*.json",),   # ablation-<id>/ (cmd/ablation_cache.py)
    "forecast": ("forecasts/*/forecast*.json",),  # also <runs_dir>/forecasts/ (a forecast without a saved run)
}


def _run_dirs(runs_dir: Path, run_ids: Iterable[str] | None) -> list[Path]:
    if not runs_dir.is_dir():
        return []
    wanted = set(run_ids or ())
    return [p for p in sorted(runs_dir.iterdir()) if (p / "run.json").is_file() and (not wanted or p.name in wanted)]


def run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``run.json`` (model and data targets, status, ...), ``{}`` if it has none."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_results(
    runs_dir: str | os.PathLike, kinds: Iterable[str] | None = None, run_ids: Iterable[str] | None = None,
    extra_files: Iterable[str | os.PathLike] = (),
) -> list[Result]:
    """Every result of ``kinds`` (default all) saved in the run folders under ``runs_dir`` (only ``run_ids``
    if given), plus ``extra_files`` (e.g. a benchmark written with ``results_path=``), oldest run first."""
    kinds = tuple(kinds or KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown result kind(s) {unknown}; use some of {', '.join(KINDS)}")
    found: dict[Path, Result] = {}
    for run_dir in _run_dirs(Path(runs_dir), run_ids):
        for kind in kinds:
            for pattern in _PATTERNS[kind]:
                for path in sorted(run_dir.glob(pattern)):
                    if path in found:
                        continue
                    res = read_result(path)
                    if res.kind == kind:
                        found[path] = _with_run(res, run_dir.name)
    if "forecast" in kinds and not run_ids and Path(runs_dir).is_dir():
        for path in sorted(Path(runs_dir).glob(_PATTERNS["forecast"][0])):
            found[path] = read_result(path)
    for path in map(Path, extra_files):
        res = read_result(path)
        if res.kind in kinds:
            found[path] = res
    return list(found.values())


def _with_run(res: Result, run_id: str) -> Result:
    return res if res.run_id else Result(res.path, res.kind, res.schema_version, run_id, res.data)


def _short(target: str | None) -> str:
    return (target or "").rsplit(".", 1)[-1]


def sample_rows(results: Iterable[Result], runs_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per sampled set (model / gaussian / train) with the secondary metrics vs the test split."""
    rows = []
    for res in results:
        if res.kind != "sample":
            continue
        info = run_info(Path(runs_dir) / res.run_id) if runs_dir and res.run_id else {}
        for set_name, vals in res["metrics"].items():
            rows.append({"run_id": res.run_id, "sample_dir": res.path.parent.name, "set": set_name,
                         "model": _short(info.get("model_target")), "data": _short(info.get("datamodule_target")),
                         "steps": res["num_diffusion_steps"], "samples_per_s": res["sampling"].get("samples_per_s"), **vals})
    return rows


def _interval_cols(vals: dict[str, Any], metrics: Iterable[str]) -> dict[str, Any]:
    out = {}
    for m in metrics:
        v = vals.get(m) or {}
        out[m], out[f"{m}_ci95"] = v.get("mean"), v.get("ci95")
    return out


def quality_rows(results: Iterable[Result]) -> list[dict[str, Any]]:
    """The Diffusion-TS-protocol verdicts: one row per (sampling run, set), with mean and 95 % interval of
    Context-FID and the discriminative score against the training windows, and whether the model beat the
    Gaussian on each."""
    rows = []
    for res in results:
        quality = res.get("quality") if res.kind == "sample" else None
        if not quality:
            continue
        verdict = quality.get("beats_gaussian") or {}
        for set_name, vals in quality.get("sets", {}).items():
            row = {"run_id": res.run_id, "sample_dir": res.path.parent.name, "set": set_name, "n": vals.get("n"),
                   **_interval_cols(vals, ("context_fid", "discriminative"))}
            if set_name == "model" and isinstance(verdict, dict):
                row.update({f"beats_gaussian_{k}": v for k, v in verdict.items()})
            rows.append(row)
    return rows


def evaluation_rows(results: Iterable[Result]) -> list[dict[str, Any]]:
    """One row per (evaluation file, metric): mean, 95 % interval, number of runs, seconds."""
    rows = []
    for res in results:
        if res.kind != "evaluation":
            continue
        for key, r in res["results"].items():
            rows.append({"run_id": res.run_id, "file": str(res.path), "metric": key, "mean": r.get("mean"),
                         "ci95": r.get("ci95"), "runs": len(r.get("runs") or []), "seconds": r.get("seconds")})
    return rows


def benchmark_sections(res: Result) -> dict[str, list[dict[str, Any]]]:
    """The row tables of one cache benchmark or ablation, by title (empty tables left out)."""
    if res.kind not in ("benchmark", "ablation"):
        raise ResultFileError(f"{res.path} is a '{res.kind}' result, not a cache benchmark or ablation")
    sections = {
        "speed-up per batch size": res.get("by_batch"),
        "ablation": res.get("variants"),
        "parameter sweeps": res.get("sweeps"),
        "fewer steps on the same Brownian path": (res.get("brownian_matched") or {}).get("rows"),
        "speed vs quality (time per sample)": sorted(res.get("pareto") or [], key=lambda r: r["time_per_sample_s"]),
        "token-path scaling with length": res.get("token_scaling"),
    }
    for m in res.get("matched") or []:  # the equal-time comparisons of the benchmark (tsdiff.tasks.bench_pareto)
        sections[f"{m.get('solver')} {m.get('steps')} steps: cache vs fewer steps (rel. L2 to uncached)"] = m.get("rows")
    return {title: rows for title, rows in sections.items() if rows}


def forecast_rows(results: Iterable[Result]) -> list[dict[str, Any]]:
    """One row per (forecast file, method): point and probabilistic scores as saved."""
    rows = []
    for res in results:
        if res.kind != "forecast":
            continue
        for r in res["rows"]:
            rows.append({"file": str(res.path), "dataset": res["dataset"], "horizon": res.get("horizon"), **r})
    return rows


# ---------------------------------------------------------------------------------------------------
# Views across runs: what the notebook compares (models x data sets), and the arrays behind a figure.

_EVAL_COLUMNS = {  # cmd/evaluate.py metric -> column of generation_table (DTW: dtw@<segment length>)
    "predictive": "predictive", "kl": "kl", "segment_dtw_paired": "dtw", "segment_dtw_nn": "dtw_nn",
    "sliced_wasserstein": "swd", "correlational": "correlational",
}


def run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's resolved training ``config.yaml`` as a plain dict (``{}`` if it has none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def run_label(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run is, for tables: ``model`` (class name), ``data`` (datamodule class) and ``domain``
    (``time``/``frequency`` for the score model, else ``-``)."""
    info, cfg = run_info(run_dir), run_config(run_dir)
    domain = "-"
    if cfg and cfg.get("model") is None and "fourier_transform" in cfg:
        domain = "frequency" if cfg["fourier_transform"] else "time"
    return {"model": _short(info.get("model_target")), "data": _short(info.get("datamodule_target")), "domain": domain}


def generation_table(results: Iterable[Result], runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per (sampling run, set) across models and data sets: the quality verdict's Context-FID and
    discriminative score (mean and 95 % interval, vs the training windows) for ``model`` / ``gaussian`` /
    ``held_out``; each row also takes the scores of a ``cmd/evaluate.py model_id=<run> set=<set>`` run on the
    same sampling run (predictive, KL, DTW, SWD, correlational; reference = training windows); every row takes
    the SWD vs the test split from ``cmd/sample.py`` (``swd_vs_test``: secondary, it cannot rank generators)."""
    results = list(results)
    evals: dict[tuple[str | None, str, str], dict[str, Any]] = {}
    for res in results:
        if res.kind != "evaluation":
            continue
        src = res.get("source") or {}
        if src.get("sample_id") and src.get("reference", "train") == "train":
            evals[(res.run_id, src["sample_id"], src.get("set") or "model")] = res["results"]
    rows = []
    for res in results:
        if res.kind != "sample":
            continue
        label = run_label(Path(runs_dir) / res.run_id) if res.run_id else {}
        sample_id = res.path.parent.name
        quality = (res.get("quality") or {}).get("sets", {})
        secondary = res.get("metrics") or {}
        for set_name in dict.fromkeys([*quality, *[s for s in secondary if s != "train"]]):
            row = {"run_id": res.run_id, "sample_dir": sample_id, **label, "set": set_name,
                   **_interval_cols(quality.get(set_name, {}), ("context_fid", "discriminative"))}
            for key, value in (evals.get((res.run_id, sample_id, set_name)) or {}).items():
                base, at, length = key.partition("@")  # segment DTW reports one score per segment length
                if base in _EVAL_COLUMNS and value is not None:
                    col = _EVAL_COLUMNS[base] + at + length
                    row[col], row[f"{col}_ci95"] = value.get("mean"), value.get("ci95")
            row["swd_vs_test"] = (secondary.get(set_name) or {}).get("sliced_wasserstein")
            rows.append(row)
    return rows


def forecast_table(results: Iterable[Result]) -> list[dict[str, Any]]:
    """Forecast scores across data sets: one row per (data set, horizon, method), TimeDiff and the
    baselines alike, with MSE, MAE, CRPS (and its skill), 50/80/95 % interval coverage (``None`` for point
    forecasts) and time per window."""
    keep = ("mse", "mae", "crps", "crps_skill", "pi50_coverage", "pi80_coverage", "pi95_coverage", "ms_per_window")
    return [{"dataset": r["dataset"], "horizon": r.get("horizon"), "method": r.get("method"), "kind": r.get("kind"),
             **{k: r.get(k) for k in keep}} for r in forecast_rows(results)]


def pareto_points(res: Result) -> list[dict[str, Any]]:
    """Speed-vs-quality points of a cache benchmark or ablation: ``panel`` (one equal-time comparison: solver
    and steps), ``group`` (uncached / e2crf / fewer-steps / ablation), ``label``, ``time_per_sample_s`` and
    ``rel_l2`` (relative L2 to the uncached samples from the same noise, the benchmark's yardstick), plus
    ``context_fid`` or ``swd`` where the file has them. Benchmarks: the rows of each ``matched`` comparison
    (or the ``pareto`` rows of files written before it); ablations: the ``variants`` (time per sample =
    median batch time / batch size)."""
    keep = ("context_fid", "swd")
    if res.kind == "benchmark":
        out = []
        for m in res.get("matched") or []:
            panel = f"{m.get('solver')} {m.get('steps')} steps"
            out += [{"panel": panel, "group": r["method"], "label": r.get("name", r["method"]), "time_per_sample_s": r["time_per_sample_s"],
                     "rel_l2": r.get("rel_l2"), **{k: r[k] for k in keep if k in r}} for r in m.get("rows") or []]
        for p in res.get("pareto") or []:  # before the matched comparisons
            out.append({"panel": "pareto", "group": p["method"], "label": f"{p['method']} {p.get('steps', '')}".strip(),
                        "time_per_sample_s": p["time_per_sample_s"], "rel_l2": p.get("rel_l2"), **{k: p[k] for k in keep if k in p}})
        return out
    if res.kind == "ablation":
        batch = res.get("batch_size") or 1
        return [{"panel": "ablation", "group": "uncached" if v["variant"] == "baseline" else "ablation", "label": v["variant"],
                 "time_per_sample_s": v["time_s"] / batch, "rel_l2": v.get("rel_l2"), **{k: v[k] for k in keep if k in v}}
                for v in res["variants"]]
    raise ResultFileError(f"{res.path} is a '{res.kind}' result, not a cache benchmark or ablation")


def load_samples(runs_dir: str | os.PathLike, run_id: str, sample_id: str | None = None) -> dict[str, Any]:
    """The arrays a sampling run saved (newest ``samples/<id>/`` of the run unless ``sample_id``):
    ``generated`` (``samples.npy``) and ``real`` (``real.npy``, the test windows), both ``(N, length,
    channels)`` in the datamodule's standardized space, plus ``sample_dir``."""
    import numpy as np

    root = Path(runs_dir) / run_id / "samples"
    dirs = sorted((p for p in root.glob("*") if (p / "samples.npy").is_file()), key=lambda p: p.stat().st_mtime)
    if sample_id is not None:
        dirs = [p for p in dirs if p.name == sample_id]
    if not dirs:
        what = f"samples/{sample_id}" if sample_id else "a samples/<id>/samples.npy"
        raise FileNotFoundError(f"run '{run_id}' under {runs_dir} has no {what}; run `python cmd/sample.py model_id={run_id}` first")
    sdir = dirs[-1]
    out = {"sample_dir": sdir, "generated": np.load(sdir / "samples.npy", allow_pickle=False)}
    if (sdir / "real.npy").is_file():
        out["real"] = np.load(sdir / "real.npy", allow_pickle=False)
    return out
