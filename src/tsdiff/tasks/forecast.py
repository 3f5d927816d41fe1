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
   DiffusionSampler (:func:`tsdiff.sampling.forecast.sample_forecasts`). MSE/MAE score the sample mean (the paper's protocol); CRPS and an 80% interval
   (10%-90% sample quantiles: coverage and width) use the whole sample set.
5. Fit and score every entry of ``baselines`` (seasonal naive, the AR model alone, DLinear) on the same
   windows; their CRPS is that of a one-member ensemble (= MAE).
6. Optionally (``timing.horizons``; ``timing_only=true`` skips steps 2-5) time TimeDiff's samplers for several horizons like the paper's
   Table 8, with an untrained model of the same size (time does not depend on the weights).

Everything is scored in the datamodule's standardized space (as the paper's tables). The result table
is printed and written atomically to ``<output_dir>/forecast.json``.
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

__all__ = ["run", "format_table", "interval_stats"]


def interval_stats(samples: np.ndarray, target: np.ndarray, level: float = 0.8) -> dict[str, float]:
    """Empirical central prediction interval of the sample set: coverage and mean width."""
    lo_q, hi_q = (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [lo_q, hi_q], axis=0)
    inside = (target >= lo) & (target <= hi)
    return {f"pi{int(level * 100)}_coverage": float(inside.mean()), f"pi{int(level * 100)}_width": float((hi - lo).mean())}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of the result rows."""
    cols = [("method", "{:<22}"), ("mse", "{:>8.4f}"), ("mae", "{:>8.4f}"), ("crps", "{:>8.4f}"),
            ("pi80_coverage", "{:>8.3f}"), ("ms_per_window", "{:>10.2f}"), ("nfe", "{:>5}")]
    head = "{:<22}{:>8}{:>8}{:>8}{:>8}{:>10}{:>5}".format("method", "MSE", "MAE", "CRPS", "PI80cov", "ms/window", "NFE")
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
    # the shared forecasting metrics (MSE/MAE of the sample mean, ensemble CRPS)
    from tsdiff.metrics.forecasting import crps_ensemble, mae, mse  # noqa: PLC0415

    return mse, mae, crps_ensemble


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


def _score_samples(samples: np.ndarray, future: np.ndarray) -> dict[str, float]:
    mse, mae, crps = _metrics()
    return {"mse": float(mse(samples, future)), "mae": float(mae(samples, future)),
            "crps": float(crps(samples, future)), **interval_stats(samples, future)}


def _eval_timediff(model, lookback: np.ndarray, future: np.ndarray, cfg: DictConfig) -> list[dict[str, Any]]:
    ev = cfg.eval
    # warm-up (allocator, kernels) before anything is timed
    sample_forecasts(model, lookback[:2], num_samples=2, solver="ddpm", steps=2, seed=int(cfg.seed))
    rows = []
    for name, spec in _solvers(cfg).items():
        samples, stats = sample_forecasts(
            model, lookback, num_samples=int(ev.num_samples), solver=str(spec.solver), steps=int(spec.steps),
            seed=int(cfg.seed), sample_batch_size=int(ev.sample_batch_size),
            solver_kwargs=_plain(spec.get("solver_kwargs")), return_stats=True,
        )
        arr = samples.detach().cpu().numpy()
        rows.append({
            "method": f"timediff[{name}]", "kind": "timediff", "solver": str(spec.solver), "steps": int(spec.steps),
            "nfe": int(stats.network_evaluations), "wall_s": float(stats.wall_time_s),
            "ms_per_window": 1000.0 * stats.wall_time_s / len(lookback), **_score_samples(arr, future),
        })
        log.info("%s: mse %.4f in %.2f s", rows[-1]["method"], rows[-1]["mse"], stats.wall_time_s)
    return rows


def _eval_baselines(cfg: DictConfig, dm, lookback: np.ndarray, future: np.ndarray) -> list[dict[str, Any]]:
    from hydra.utils import instantiate  # noqa: PLC0415

    mse, mae, crps = _metrics()
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
        pred_s = time.perf_counter() - start
        rows.append({
            "method": str(getattr(forecaster, "name", key)), "kind": "baseline", "fit_s": fit_s,
            "ms_per_window": 1000.0 * pred_s / len(lookback), "nfe": None,
            "mse": float(mse(pred, future)), "mae": float(mae(pred, future)), "crps": float(crps(pred[None], future)),
            "pi80_coverage": None,
        })
    return rows


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
        "space": "datamodule-standardized (train-split z-score per variable)",
    }
    rows: list[dict[str, Any]] = []
    if not cfg.get("timing_only", False):
        if cfg.get("model") is not None:
            model, result["timediff"] = _build_or_load_model(cfg, dm, out_dir)
            result["timediff"]["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
            result["timediff"]["channel_independent"] = bool(getattr(model.hparams, "channel_independent", False))
            rows += _eval_timediff(model, lookback, future, cfg)
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
