"""``python cmd/forecast.py``: score TimeDiff and the point-forecast baselines on the same test windows.

Steps (config: ``conf/forecast.yaml``):

1. Build the forecasting datamodule (``datamodule=forecast_energy | forecast_stocks | forecast_csv``).
2. TimeDiff: load run ``model_id`` (trained with ``python cmd/train.py model=timediff
   datamodule=forecast_...``) or, with ``model_id=null``, train one here through the train command's
   :func:`tsdiff.tasks.train.fit` with ``trainer`` (the model's callbacks: AR pretraining first, model
   selection and early stopping on ``select_by``'s metric), without a run folder.
3. Take the evaluation windows: ``eval.split`` (test), stride ``eval.stride`` (null = horizon, i.e.
   non-overlapping targets), at most ``eval.max_windows`` spread evenly over the split.
4. Sample ``eval.num_samples`` (10, as the paper) forecasts per window with every entry of
   ``eval.solvers`` (DPM-Solver++ with few steps, and 100-step ancestral DDPM) through the shared
   DiffusionSampler (:func:`tsdiff.sampling.forecast.sample_forecasts`). MSE/MAE score the sample mean
   (the paper's protocol; ``eval.antithetic`` starts them in pairs ``(x^K, -x^K)``, which keeps each sample's
   law but takes most of the ``var / S`` noise out of their mean); ``mse_cmean`` / ``mae_cmean`` score the conditional-mean point forecast (the
   mean of the solver's first x0-predictions, free of the samples' ``var / S`` noise); the ensemble CRPS, 50/80/95% interval coverage and width, and the PIT histogram
   with its flatness use the whole sample set (:func:`tsdiff.metrics.forecasting.probabilistic_scores`).
   With ``eval.calibration.solver`` set, that solver also samples ``eval.calibration.max_windows`` val
   windows, which gives two more rows: ``+gauss`` (TimeDiff's conditional mean plus a Gaussian with its val
   residual std: the reference of every ``crps_skill``) and ``+spread_cal`` (the samples rescaled on val:
   POST-HOC calibration, :mod:`tsdiff.models.forecast_calibration`).
5. Fit and score every entry of ``baselines`` (seasonal naive, the AR model alone, DLinear) on the same
   windows; point baselines have no distribution (their CRPS is MAE); baselines with ``sample`` (the
   ``ResidualEnsemble`` wrappers: DLinear + Gaussian residuals, seasonal naive + bootstrapped residuals)
   are scored as ensembles of ``eval.num_samples`` members, MSE/MAE on their point forecast.
6. Optionally (``timing.horizons``; ``timing_only=true`` skips steps 2-5) time TimeDiff's samplers for several horizons like the paper's
   Table 8, with an untrained model of the same size (time does not depend on the weights).

Everything is scored in the datamodule's standardized space (as the paper's tables). The result table
is printed and written atomically to ``<output_dir>/forecast.json``; ``fan_chart`` in it holds the median,
the 50/80/95% bands and the truth of ``eval.fan_chart.windows`` test windows (the figure is
``fanchart.png`` next to it, :func:`tsdiff.viz.fanchart.plot_fan_chart`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tsdiff.results import make_dirs, stamp, write_result
from tsdiff.runs import new_child_dir, resolve_run_dir, utc_now
from tsdiff.sampling.forecast import sample_forecasts

log = logging.getLogger("tsdiff")

__all__ = ["run", "format_table"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of the result rows."""
    cols = [("method", "{:<30}"), ("mse", "{:>8.4f}"), ("mse_cmean", "{:>8.4f}"), ("mae", "{:>8.4f}"), ("crps", "{:>8.4f}"),
            ("crps_skill", "{:>7.3f}"), ("pi50_coverage", "{:>6.3f}"), ("pi80_coverage", "{:>6.3f}"),
            ("pi95_coverage", "{:>6.3f}"), ("pit_flatness", "{:>7.3f}"), ("ms_per_window", "{:>10.2f}"),
            ("nfe", "{:>5}")]
    head = "{:<30}{:>8}{:>8}{:>8}{:>8}{:>7}{:>6}{:>6}{:>6}{:>7}{:>10}{:>5}".format(
        "method", "MSE", "MSE(cm)", "MAE", "CRPS", "skill", "PI50", "PI80", "PI95", "PITtv", "ms/window", "NFE")
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for key, fmt in cols:
            value = row.get(key)
            if value is None:
                width = int(re.search(r"[<>](\d+)", fmt).group(1))
                cells.append(f"{'-':>{width}}")
            else:
                cells.append(fmt.format(value))
        lines.append("".join(cells))
    return "\n".join(lines)


def _metrics():
    # the shared forecasting metrics (MSE/MAE of the sample mean, ensemble CRPS, intervals, PIT)
    from tsdiff.metrics.forecasting import mae, mse, probabilistic_scores  # noqa: PLC0415

    return mse, mae, probabilistic_scores


def _build_or_load_model(cfg: DictConfig, dm, out_dir: Path) -> tuple[Any, dict[str, Any]]:
    from hydra.utils import instantiate  # noqa: PLC0415

    if cfg.get("model_id"):
        from tsdiff.tasks.common import load_run_model  # noqa: PLC0415

        run_dir = resolve_run_dir(cfg.model_id, cfg.runs_dir)
        model, _, info = load_run_model(run_dir)
        want = dm.model_kwargs()
        got = {k: int(getattr(model, k, -1)) for k in want}
        if got != want:
            raise ValueError(
                f"run '{run_dir.name}' was trained for {got} but datamodule gives {want}; pass the same "
                f"datamodule (lookback/horizon/univariate) the run was trained with"
            )
        return model, {"source": "run", "model_id": run_dir.name, "run_dir": str(run_dir)}
    from tsdiff.models.callbacks import ARPretraining, RestoreBestWeights  # noqa: PLC0415
    from tsdiff.tasks.train import fit  # noqa: PLC0415

    model = instantiate(cfg.model, **dm.model_kwargs())
    trainer, fit_s = fit(cfg, model, dm, root_dir=out_dir)  # the train command's path, without a run folder
    val = trainer.callback_metrics.get("val/loss")
    kept = [cb for cb in trainer.callbacks if isinstance(cb, RestoreBestWeights)]
    ar_s = sum(cb.seconds for cb in trainer.callbacks if isinstance(cb, ARPretraining))
    return model, {
        "selected_by": kept[0].monitor if kept else None,
        "selected_value": float(kept[0].best) if kept and np.isfinite(kept[0].best) else None,
        "source": "trained_here",
        "ar_pretrain_seconds": ar_s,
        "fit_seconds": fit_s,
        "optimizer_steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_steps_per_s": trainer.global_step / (fit_s - ar_s) if fit_s > ar_s else float("nan"),
        "val_loss_last": float(val) if val is not None else None,
    }


def _solvers(cfg: DictConfig) -> dict[str, Any]:
    """``eval.solvers`` without the entries set to null (``eval.solvers.dpmpp_10=null`` drops one)."""
    return {str(k): v for k, v in (cfg.eval.get("solvers") or {}).items() if v is not None}


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _score_samples(samples: np.ndarray, future: np.ndarray, seed: int, point: np.ndarray | None = None) -> dict[str, Any]:
    """MSE/MAE of ``point`` (default: the sample mean) and the ensemble's probabilistic scores."""
    mse, mae, prob = _metrics()
    point = samples if point is None else point
    return {"mse": float(mse(point, future)), "mae": float(mae(point, future)), **prob(samples, future, seed=seed)}


def _sample(model, lookback: np.ndarray, cfg: DictConfig, spec: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """Samples ``(S, N, H, C)``, the conditional-mean point forecast ``(N, H, C)`` (mean of the first
    x0-predictions) and the sampler stats."""
    samples, first, stats = sample_forecasts(
        model, lookback, num_samples=int(cfg.eval.num_samples), solver=str(spec.solver), steps=int(spec.steps),
        seed=int(cfg.seed), sample_batch_size=int(cfg.eval.sample_batch_size),
        solver_kwargs=_plain(spec.get("solver_kwargs")), return_stats=True, return_first_x0=True,
        antithetic=bool(cfg.eval.get("antithetic", False)),
    )
    return samples.detach().cpu().numpy(), first.mean(0).detach().cpu().numpy(), stats


def _calibration_rows(model, dm, cfg: DictConfig, name: str, spec: Any, test_samples: np.ndarray, point: np.ndarray,
                      future: np.ndarray) -> list[dict[str, Any]]:
    """The Gaussian-residual reference (TimeDiff's conditional-mean point forecast ``point`` + N(0, its val
    residual std^2)) and the POST-HOC spread calibration of ``name``'s samples, both fitted on val windows."""
    from tsdiff.models.forecast_calibration import apply_spread, gaussian_ensemble, residual_std, spread_factors  # noqa: PLC0415

    cal = cfg.eval.calibration
    val_lb, val_fu = dm.arrays("val", stride=cal.get("stride"), max_windows=cal.get("max_windows"))
    val_samples, val_point, _ = _sample(model, val_lb, cfg, spec)
    seed, anti = int(cfg.seed), bool(cfg.eval.get("antithetic", False))
    gauss = gaussian_ensemble(point, residual_std(val_point, val_fu), int(cfg.eval.num_samples), seed=seed, antithetic=anti)
    calibrated = apply_spread(test_samples, spread_factors(val_samples, val_fu, antithetic=anti))
    base = {"kind": "timediff_calibrated", "solver": str(spec.solver), "steps": int(spec.steps), "nfe": None,
            "calibration_windows": int(len(val_lb))}
    return [{"method": f"timediff[{name}]+gauss", **base, **_score_samples(gauss, future, seed, point=point),
             "note": "reference: TimeDiff's conditional-mean forecast + Gaussian with its val residual std per step and variable"},
            {"method": f"timediff[{name}]+spread_cal", **base, **_score_samples(calibrated, future, seed),
             "note": "POST-HOC calibration: deviations from the sample mean rescaled on val windows"}]


def _eval_timediff(model, dm, lookback: np.ndarray, future: np.ndarray, cfg: DictConfig) -> tuple[list[dict[str, Any]], dict]:
    """Rows of every solver (+ the calibration rows of ``eval.calibration.solver``) and the samples kept for
    the fan chart (those of ``eval.fan_chart.solver``)."""
    # warm-up (allocator, kernels) before anything is timed
    sample_forecasts(model, lookback[:2], num_samples=2, solver="ddpm", steps=2, seed=int(cfg.seed))
    rows, kept = [], {}
    cal_solver = (cfg.eval.get("calibration") or {}).get("solver")
    fan_solver = (cfg.eval.get("fan_chart") or {}).get("solver")
    for key, value in (("calibration", cal_solver), ("fan_chart", fan_solver)):
        if value and value not in _solvers(cfg):
            raise ValueError(f"eval.{key}.solver={value!r} is not an entry of eval.solvers ({', '.join(_solvers(cfg))}); "
                             f"name one of them or set eval.{key}.solver=null")
    for name, spec in _solvers(cfg).items():
        arr, cmean, stats = _sample(model, lookback, cfg, spec)
        mse, mae, _ = _metrics()
        rows.append({"mse_cmean": float(mse(cmean, future)), "mae_cmean": float(mae(cmean, future)),
            "method": f"timediff[{name}]", "kind": "timediff", "solver": str(spec.solver), "steps": int(spec.steps),
            "nfe": int(stats.network_evaluations), "wall_s": float(stats.wall_time_s),
            "ms_per_window": 1000.0 * stats.wall_time_s / len(lookback), **_score_samples(arr, future, int(cfg.seed)),
        })
        log.info("%s: mse %.4f crps %.4f pi80 %.3f in %.2f s", rows[-1]["method"], rows[-1]["mse"], rows[-1]["crps"],
                 rows[-1]["pi80_coverage"], stats.wall_time_s)
        if name == cal_solver:
            cal_rows = _calibration_rows(model, dm, cfg, name, spec, arr, cmean, future)
            ref = cal_rows[0]["crps"]
            for row in (rows[-1], *cal_rows):
                row["crps_skill"] = 1.0 - row["crps"] / ref
                row.setdefault("ms_per_window", rows[-1]["ms_per_window"])  # the solver's sampling cost
            rows += cal_rows
        if name == fan_solver:
            kept = {"method": f"timediff[{name}]", "samples": arr}
    return rows, kept


def _eval_baselines(cfg: DictConfig, dm, lookback: np.ndarray, future: np.ndarray) -> list[dict[str, Any]]:
    from hydra.utils import instantiate  # noqa: PLC0415

    mse, mae, _ = _metrics()
    rows = []
    for key, bcfg in (cfg.get("baselines") or {}).items():
        if bcfg is None:
            continue
        forecaster = instantiate(bcfg)
        start = time.perf_counter()
        forecaster.fit(dm)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = forecaster.predict(lookback)
        if hasattr(forecaster, "sample"):  # a probabilistic baseline: an ensemble like TimeDiff's
            samples = forecaster.sample(lookback, int(cfg.eval.num_samples), seed=int(cfg.seed))
            scores = _score_samples(samples, future, int(cfg.seed), point=pred)
        else:
            scores = {"mse": float(mse(pred, future)), "mae": float(mae(pred, future)), "crps": float(mae(pred, future))}
        pred_s = time.perf_counter() - start
        rows.append({"method": str(getattr(forecaster, "name", key)), "kind": "baseline", "fit_s": fit_s,
                     "ms_per_window": 1000.0 * pred_s / len(lookback), "nfe": None, **scores})
    return rows


def _fan_chart(cfg: DictConfig, dm, lookback: np.ndarray, future: np.ndarray, kept: dict, out_dir: Path) -> dict:
    """Median, 50/80/95% bands and truth of a few evenly spread test windows of one variable (JSON-ready),
    drawn to ``<out_dir>/fanchart.png``."""
    from tsdiff.metrics.forecasting import ensemble_interval  # noqa: PLC0415
    from tsdiff.viz.fanchart import plot_fan_chart  # noqa: PLC0415

    fc = cfg.eval.fan_chart
    channel = int(fc.get("channel", -1)) % future.shape[-1]
    n = min(int(fc.windows), len(future))
    picks = np.unique(np.linspace(0, len(future) - 1, n).round().astype(int))
    x = kept["samples"][:, picks][..., channel]  # (S, n, H)
    bands = {}
    for level in (0.5, 0.8, 0.95):
        lo, hi = ensemble_interval(x, level)
        bands[f"{round(100 * level)}"] = {"lo": lo.tolist(), "hi": hi.tolist()}
    history = min(int(fc.get("history") or dm.lookback), dm.lookback)
    names = getattr(dm, "channel_names", None) or []
    data = {
        "method": kept["method"], "channel": channel, "channel_name": names[channel] if len(names) > channel else str(channel),
        "window_index": picks.tolist(), "history": lookback[picks, -history:, channel].tolist(),
        "truth": future[picks, :, channel].tolist(), "median": np.median(x, axis=0).tolist(), "bands": bands,
        "space": "datamodule-standardized",
    }
    fig = plot_fan_chart(data, title=f"{dm.name}: {data['method']}, variable {data['channel_name']}")
    data["figure"] = str(write_result(out_dir / "fanchart.png", fig))
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close(fig)
    return data


def _timing_table(cfg: DictConfig, dm) -> list[dict[str, Any]]:
    """Table 8 analog: time per window of each sampler for several horizons, and the ratio to DDPM-100."""
    from hydra.utils import instantiate  # noqa: PLC0415

    tcfg = cfg.timing
    horizons = list(tcfg.get("horizons") or [])
    if not horizons:
        return []
    gen = torch.Generator().manual_seed(int(cfg.seed))
    table = []
    lookback_len = int(tcfg.get("lookback") or dm.lookback)
    n_channels = int(tcfg.get("n_channels") or dm.n_channels)
    for horizon in horizons:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            model = instantiate(cfg.model, lookback=lookback_len, horizon=int(horizon), n_channels=n_channels)
        x = torch.randn(int(tcfg.windows), lookback_len, n_channels, generator=gen)
        sample_forecasts(model, x[:1], num_samples=1, solver="ddpm", steps=2)  # warm-up
        row: dict[str, Any] = {"horizon": int(horizon)}
        for name, spec in _solvers(cfg).items():
            times = []
            for _ in range(int(tcfg.repeats)):
                _, stats = sample_forecasts(model, x, num_samples=int(tcfg.num_samples), solver=str(spec.solver),
                                          steps=int(spec.steps), seed=int(cfg.seed), return_stats=True,
                                          sample_batch_size=int(cfg.eval.sample_batch_size))
                times.append(stats.wall_time_s)
            row[f"{name}_ms_per_window"] = 1000.0 * float(np.median(times)) / len(x)
        ref = row.get(f"{tcfg.reference}_ms_per_window")
        if ref:
            for name in _solvers(cfg):
                row[f"{name}_ratio_to_{tcfg.reference}"] = row[f"{name}_ms_per_window"] / ref
        table.append(row)
        log.info("timing H=%d: %s", horizon, row)
    return table


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate TimeDiff and the baselines; returns the result dict also written to ``forecast.json``."""
    import pytorch_lightning as pl  # noqa: PLC0415
    from hydra.utils import instantiate  # noqa: PLC0415

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = instantiate(cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    if cfg.get("output_dir"):
        out_dir = make_dirs(cfg.output_dir)  # removed again if the command fails and leaves it empty
    elif cfg.get("model_id"):
        out_dir = new_child_dir(resolve_run_dir(cfg.model_id, cfg.runs_dir) / "forecasts")
    else:
        out_dir = new_child_dir(Path(cfg.runs_dir) / "forecasts")

    ev = cfg.eval
    lookback, future = dm.arrays(str(ev.split), stride=ev.get("stride"), max_windows=ev.get("max_windows"))
    result: dict[str, Any] = {
        "created": utc_now(),
        "dataset": dm.name,
        "lookback": dm.lookback,
        "horizon": dm.horizon,
        "n_channels": dm.n_channels,
        "univariate": dm.univariate,
        "split": str(ev.split),
        "n_windows": int(len(lookback)),
        "num_samples": int(ev.num_samples),
        "antithetic": bool(ev.get("antithetic", False)),
        "space": "datamodule-standardized (train-split z-score per variable)",
    }
    rows: list[dict[str, Any]] = []
    if not cfg.get("timing_only", False):
        if cfg.get("model") is not None:
            model, result["timediff"] = _build_or_load_model(cfg, dm, out_dir)
            result["timediff"]["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
            result["timediff"]["channel_independent"] = bool(getattr(model.hparams, "channel_independent", False))
            td_rows, kept = _eval_timediff(model, dm, lookback, future, cfg)
            rows += td_rows
            if kept:
                result["fan_chart"] = _fan_chart(cfg, dm, lookback, future, kept, out_dir)
        rows += _eval_baselines(cfg, dm, lookback, future)
    result["rows"] = rows
    td = {r["method"]: r for r in rows if r["kind"] == "timediff"}
    ref = cfg.timing.get("reference")
    if ref and f"timediff[{ref}]" in td:
        base = td[f"timediff[{ref}]"]
        result["vs_reference"] = {
            name: {"mse_rel_diff": (r["mse"] - base["mse"]) / base["mse"], "speedup": base["wall_s"] / r["wall_s"]}
            for name, r in td.items()
        }
    result["timing"] = _timing_table(cfg, dm)
    table = format_table(rows)
    header = (f"{dm.name}: L={dm.lookback} H={dm.horizon} C={dm.n_channels}, {len(lookback)} {ev.split} windows, "
              f"{ev.num_samples} samples (standardized space)")
    if rows:
        print(header + "\n" + table, flush=True)
    for name, v in (result.get("vs_reference") or {}).items():
        print(f"{name}: MSE {100 * v['mse_rel_diff']:+.2f}% vs {ref}, {v['speedup']:.2f}x faster", flush=True)
    for row in result["timing"]:
        print("timing " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    result = stamp("forecast", result)  # the versioned result layout (tsdiff.results.schema)
    path = write_result(out_dir / "forecast.json", result)  # a free name if output_dir already holds one
    result["output"] = str(path)
    print(f"results: {path}", flush=True)
    return result
