"""The ``evaluate`` task: score generated windows against real ones, print a table, save JSON, log.

Two ways to name the data (``cfg`` is the Hydra config of ``conf/evaluate.yaml``):

* ``real_path=<real.npy> fake_path=<fake.npy>``: two arrays ``(N, length, channels)``, like the
  ``metric_pytorch.py --ori_path --fake_path`` script of K-ProtoDiff;
* ``model_id=<run_id|latest>`` (with ``runs_dir``): the newest ``samples/<sample_id>/`` folder of that run
  (or ``sample_id=<id>``), whose ``samples.npy`` is the generated set. The real set follows
  ``reference``:

  - ``train`` (default): the run's TRAINING windows, rebuilt from the run's datamodule config -- the
    Diffusion-TS protocol (real = the data the generator learned, ``fake[:N_real]``). A generator is
    judged on the distribution it was asked to learn;
  - ``test``: the test windows saved beside the samples (``real.npy``). With the default blocks split the
    test windows come from other periods than the training windows, so scores against them measure the
    shift between periods as much as the generator (every set, real training windows included, scored
    about the same Context-FID there on stocks): use it to check generalisation, not to rank generators.

  Both are in the datamodule's standardized space, like the samples.

Results go to ``results_path`` (default: ``evaluation.json`` beside the samples, ``evaluation-test.json``
with ``reference=test``, or ``evaluation.json`` in the working directory for ``.npy`` inputs) with an atomic write. An existing file is never overwritten silently: unless
``overwrite=true``, a new name (``evaluation-1.json``, ...) is chosen and printed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tsdiff import __version__
from tsdiff.metrics import evaluate_generation, resolve_metrics
from tsdiff.results import stamp, write_result
from tsdiff.runs import new_run_id, resolve_run_dir, utc_now
from tsdiff.tasks.common import log_metrics

log = logging.getLogger(__name__)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _to_container(x: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x


def _load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no file at '{p}'. Pass an existing .npy array of shape (N, length, channels).")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{what}: '{p}' is not a plain .npy array ({exc}). Save it with np.save(path, array).") from exc
    return arr


def run_training_windows(run_dir: Path, data_root: str | None = None) -> np.ndarray:
    """The training windows ``(N, length, channels)`` of a run, rebuilt from its saved datamodule config."""
    return run_datamodule(run_dir, data_root).train_array("train")


def run_datamodule(run_dir: Path, data_root: str | None = None):
    """The datamodule of a run, rebuilt from its saved config and set up (all splits)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"Run '{run_dir.name}' has no config.yaml, so its training windows cannot be rebuilt; pass "
            "reference=test (the test windows saved with the samples) or real_path=<real.npy> fake_path=...."
        )
    train_cfg = OmegaConf.load(cfg_path)
    if "datamodule" not in train_cfg:
        raise ValueError(f"config.yaml of run '{run_dir.name}' names no datamodule; pass reference=test or real_path=....")
    if data_root is not None:
        train_cfg.data_root = data_root
    dm = instantiate(train_cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _reference_set(dm, sample_dir: Path, which: str, n: int, seed: int) -> np.ndarray:
    """``gaussian`` / ``held_out`` as ``cmd/sample.py`` drew them for this sample folder (its saved seed)."""
    from omegaconf import OmegaConf

    from tsdiff.tasks.sample import reference_sets

    saved = sample_dir / "config.yaml"
    if saved.is_file():
        seed = int(OmegaConf.load(saved).get("seed", seed))
    out = reference_sets(dm, n, seed)[which]
    if out is None:
        raise ValueError(f"the run's data has fewer than 2 val+test windows, so there is no held_out set; use set=gaussian or set=model.")
    return out


def newest_sample_dir(run_dir: Path, sample_id: str | None = None) -> Path:
    """``samples/<sample_id>`` of a run, or its newest sample folder holding a ``samples.npy``."""
    root = run_dir / "samples"
    if sample_id:
        d = root / str(sample_id)
        if not (d / "samples.npy").is_file():
            raise FileNotFoundError(f"Run '{run_dir.name}' has no samples/{sample_id}/samples.npy. Known: {_known(root)}.")
        return d
    dirs = [d for d in root.iterdir() if (d / "samples.npy").is_file()] if root.is_dir() else []
    if not dirs:
        raise FileNotFoundError(
            f"Run '{run_dir.name}' has no samples yet ({root}/<id>/samples.npy). Generate some with "
            f"`python cmd/sample.py model_id={run_dir.name}`, or pass real_path=... fake_path=... instead."
        )
    return max(dirs, key=lambda d: ((d / "samples.npy").stat().st_mtime, d.name))


def _known(root: Path) -> str:
    return ", ".join(sorted(d.name for d in root.iterdir() if d.is_dir())) if root.is_dir() else "none"


def free_path(path: Path) -> Path:
    """``path`` if it does not exist, else the first free ``<stem>-<k><suffix>`` beside it."""
    if not path.exists():
        return path
    k = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not candidate.exists():
            return candidate
        k += 1


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table: metric, mean ± 95 % interval, std, runs, seconds ("n/a": not applicable)."""
    rows = [("metric", "mean ± ci95", "std", "runs", "seconds")]
    for name, r in results.items():
        if r["mean"] is None:
            rows.append((name, "n/a", "n/a", str(len(r["runs"])), f"{r['seconds']:.1f}"))
            continue
        rows.append((name, f"{r['mean']:.4f} ± {r['ci95']:.4f}", f"{r['std']:.4f}", str(len(r["runs"])), f"{r['seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _make_logger(cfg: Any, log_dir: Path, run_name: str):
    """A Lightning logger from ``cfg.logger`` (``conf/logger/*.yaml``: ``kind: none | csv | wandb``).

    A plain string (``logger="csv"``) is accepted too when ``run`` is called from Python.
    """
    from omegaconf import OmegaConf

    from tsdiff.tasks.common import build_logger

    logger_cfg = _cfg_get(cfg, "logger", "none")
    if isinstance(logger_cfg, str):
        logger_cfg = {"kind": logger_cfg}
    logger_cfg = OmegaConf.create(_to_container(logger_cfg))
    return build_logger(logger_cfg, run_name, log_dir, project=str(_cfg_get(cfg, "project", "tsdiff")))


def _metric_settings(cfg: Any) -> dict[str, dict[str, Any]]:
    """``cfg.metric_settings`` without the null entries (null = keep the mode's default)."""
    raw = _to_container(_cfg_get(cfg, "metric_settings", {})) or {}
    if not isinstance(raw, dict):
        raise ValueError("metric_settings must map metric names to settings, e.g. {predictive: {iterations: 1000}}.")
    out = {}
    for name, settings in raw.items():
        kept = {k: v for k, v in (settings or {}).items() if v is not None}
        if kept:
            out[name] = kept
    return out


def run(cfg: Any) -> dict[str, Any]:
    """Evaluate as configured; return the saved record (results plus metadata and ``results_path``)."""
    real_path, fake_path = _cfg_get(cfg, "real_path"), _cfg_get(cfg, "fake_path")
    model_id = _cfg_get(cfg, "model_id")
    source: dict[str, Any]
    if real_path or fake_path:
        if not (real_path and fake_path):
            raise ValueError("give both real_path=<real.npy> and fake_path=<fake.npy> (or model_id=<run> instead).")
        if model_id:
            raise ValueError("give either model_id=... or real_path/fake_path, not both.")
        real = _load_npy(real_path, "real_path")
        fake = _load_npy(fake_path, "fake_path")
        default_out = Path.cwd() / "evaluation.json"
        source = {"real_path": str(Path(real_path).resolve()), "fake_path": str(Path(fake_path).resolve())}
    elif model_id:
        run_dir = resolve_run_dir(model_id, _cfg_get(cfg, "runs_dir", "lightning_logs"))
        sample_dir = newest_sample_dir(run_dir, _cfg_get(cfg, "sample_id"))
        if str(_cfg_get(cfg, "reference", "train")) == "test" and not (sample_dir / "real.npy").is_file():
            raise FileNotFoundError(
                f"{sample_dir} has samples.npy but no real.npy (the real windows to compare with). Re-run the sample "
                "command, or pass real_path=<real.npy> fake_path=" + str(sample_dir / "samples.npy")
            )
        reference = str(_cfg_get(cfg, "reference", "train"))
        if reference not in ("train", "test"):
            raise ValueError(f"reference must be 'train' (the run's training windows, Diffusion-TS) or 'test'; got {reference!r}.")
        fake = _load_npy(sample_dir / "samples.npy", "samples.npy")
        which = str(_cfg_get(cfg, "set", "model") or "model")
        if which not in ("model", "gaussian", "held_out"):
            raise ValueError(f"set={which!r} must be model (the samples), gaussian or held_out (the verdict's reference sets).")
        dm = run_datamodule(run_dir, _cfg_get(cfg, "data_root")) if reference == "train" or which != "model" else None
        if which != "model":  # the same reference set cmd/sample.py judged next to these samples
            fake = _reference_set(dm, sample_dir, which, len(fake), int(_cfg_get(cfg, "seed", 0)))
        real = dm.train_array("train") if reference == "train" else _load_npy(sample_dir / "real.npy", "real.npy")
        suffix = ("" if reference == "train" else "-test") + ("" if which == "model" else f"-{which}")
        default_out = sample_dir / f"evaluation{suffix}.json"
        source = {"model_id": run_dir.name, "sample_id": sample_dir.name, "sample_dir": str(sample_dir),
                  "reference": reference, "set": which}
    else:
        raise ValueError(
            "nothing to evaluate: pass model_id=<run_id|latest> (with runs_dir=...) or real_path=<real.npy> fake_path=<fake.npy>."
        )

    metrics = resolve_metrics(_to_container(_cfg_get(cfg, "metrics", "all")))
    mode = str(_cfg_get(cfg, "mode", "paper"))
    requested = Path(_cfg_get(cfg, "results_path", default_out)).expanduser()
    out_path = requested  # the name actually written is decided (and printed) at write time
    run_name = f"evaluate-{source.get('model_id', 'npy')}-{new_run_id(length=6)}"
    log_dir = Path(_cfg_get(cfg, "log_dir", out_path.parent / "logs")) / run_name  # fresh folder: nothing overwritten
    logger = _make_logger(cfg, log_dir, run_name)

    def progress(name: str, res: dict[str, Any]) -> None:
        for key, r in res.items():
            if r["mean"] is None:
                log.info("%s: n/a (not applicable to this data)", key)
                continue
            log.info("%s: %.5f ± %.5f (%d runs, %.1f s)", key, r["mean"], r["ci95"], len(r["runs"]), r["seconds"])

    results = evaluate_generation(
        real,
        fake,
        metrics=metrics,
        mode=mode,
        num_runs=_cfg_get(cfg, "num_runs"),
        seed=int(_cfg_get(cfg, "seed", 0)),
        device=str(_cfg_get(cfg, "device", "cpu")),
        scale=str(_cfg_get(cfg, "scale", "minmax")),
        overrides=_metric_settings(cfg),
        progress=progress,
        num_threads=_cfg_get(cfg, "num_threads"),
    )
    record = {
        "created": utc_now(),
        "tsdiff_version": __version__,
        "source": source,
        "real_shape": list(np.shape(real)),
        "fake_shape": list(np.shape(fake)),
        "mode": mode,
        "seed": int(_cfg_get(cfg, "seed", 0)),
        "scale": str(_cfg_get(cfg, "scale", "minmax")),
        "num_threads": _cfg_get(cfg, "num_threads"),
        "total_seconds": float(sum({r["metric"]: r["seconds"] for r in results.values()}.values())),
        "results": results,
    }
    # never over an existing file unless overwrite=true: a free name beside it is used and printed
    record = stamp("evaluation", record, run_id=source.get("model_id"))
    out_path = write_result(requested, record, overwrite=bool(_cfg_get(cfg, "overwrite", False)))
    record["results_path"] = str(out_path)
    print(format_table(results))
    print(f"[evaluate] results written to {out_path}")
    if logger:
        logger.log_hyperparams({"mode": mode, "seed": record["seed"], "scale": record["scale"], **source})
        flat = {}
        for key, r in results.items():
            if r["mean"] is None:  # not applicable (e.g. correlational with one channel)
                continue
            flat[f"eval/{key}"] = r["mean"]
            flat[f"eval/{key}_ci95"] = r["ci95"]
            flat[f"eval/{key}_seconds"] = r["seconds"]
        log_metrics(logger, flat)
        record["log_dir"] = str(getattr(logger, "log_dir", None) or log_dir)
    return record
