"""Up-front checks of a command's options, so a bad override costs a second instead of a data load.

:func:`validate` runs before a task touches data, a model or the disk (``tsdiff.tasks.cli.run_task`` calls
it). Every problem is a :class:`ConfigError` naming the key, the value and what would be accepted,
e.g. ``num_samples='abc' must be an integer >= 1``. The checks are a table per command (:data:`RULES`)
plus a few cross-checks (paths, run ids staying inside ``runs_dir``, a forecast's run being a TimeDiff
run); options not listed are left to the task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A command-line option with a wrong type, range or path; the message names the key."""


_MISSING = object()


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) if isinstance(cfg, DictConfig) else _MISSING


def _int(lo: int | None = None, hi: int | None = None, null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "must be set"
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                return "must be an integer" + _range(lo, hi)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return "must be an integer" + _range(lo, hi)
        return None

    return check


def _float(lo: float | None = None, hi: float | None = None, null: bool = False, open_lo: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "must be set"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a number" + _range(lo, hi, open_lo)
        if (lo is not None and (v < lo or (open_lo and v == lo))) or (hi is not None and v > hi):
            return "must be a number" + _range(lo, hi, open_lo)
        return None

    return check


def _range(lo: Any, hi: Any, open_lo: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if open_lo else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if open_lo else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _bool(null: bool = False) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, bool) or (null and v is None) else "must be true or false"


def _choice(*options: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else "must be one of " + ", ".join("null" if o is None else str(o) for o in options)


def _ints(lo: int = 1) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        items = list(v) if isinstance(v, (ListConfig, list, tuple)) else None
        if items is None or any(_int(lo)(x) for x in items):
            return f"must be a list of integers >= {lo}, e.g. [1,16]"
        return None

    return check


def _limit_batches(v: Any) -> str | None:
    """Lightning's limit_*_batches: null, an int >= 0 (batches) or a float in [0, 1] (fraction)."""
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return None
    if isinstance(v, float) and 0.0 <= v <= 1.0:
        return None
    return "must be null, an integer >= 0 (batches) or a fraction in [0, 1]"


def _devices(v: Any) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= -1) or isinstance(v, (ListConfig, list)):
        return None
    if isinstance(v, str) and all(p.strip().isdigit() for p in v.strip(",").split(",") if p.strip()):
        return None
    return "must be auto, a number of devices or a list of device indices"


def _device(v: Any) -> str | None:
    """``auto`` or a torch device this machine has (``cpu``, ``cuda:0`` with a GPU present, ...)."""
    import torch

    if v == "auto":
        return None
    try:
        dev = torch.device(str(v))
    except (RuntimeError, TypeError):
        return "must be auto or a torch device name such as cpu or cuda:0"
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        return f"is not available on this machine ({torch.cuda.device_count()} CUDA devices); use device=cpu or device=auto"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "is not available on this machine; use device=cpu or device=auto"
    return None


_CACHE = {
    "cache_kwargs.K": _int(0, null=True),
    "cache_kwargs.tau_0": lambda v: None if v == "auto" else _float(0, null=True)(v),
    "cache_kwargs.R": _int(1, null=True),
    "cache_kwargs.tau_warn": _float(0, null=True, open_lo=True),
    "cache_kwargs.random_probe_ratio": _float(0, 1, null=True),
    "cache_kwargs.mode": _choice(None, "auto", "token", "step"),
    "cache_kwargs.batch_sync": _bool(null=True),
    "cache_kwargs.forecast": _choice(None, "hold", "linear"),
}
_TRAINER = {
    "trainer.max_epochs": _int(-1, null=True),
    "trainer.max_steps": _int(-1, null=True),
    "trainer.min_epochs": _int(0, null=True),
    "trainer.num_nodes": _int(1),
    "trainer.devices": _devices,
    "trainer.accelerator": _choice("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"),
    "trainer.gradient_clip_val": _float(0, null=True),
    "trainer.log_every_n_steps": _int(1, null=True),
    "trainer.check_val_every_n_epoch": _int(1, null=True),
    "trainer.limit_train_batches": _limit_batches,
    "trainer.limit_val_batches": _limit_batches,
    "trainer.enable_progress_bar": _bool(null=True),
    "trainer.enable_model_summary": _bool(null=True),
    "trainer.deterministic": _bool(null=True),
}
_DATA = {
    "datamodule.batch_size": _int(1, null=True),
    "datamodule.seq_len": _int(2, null=True),
    "datamodule.num_workers": _int(0, null=True),
    "datamodule.stride": _int(1, null=True),
    "datamodule.val_fraction": _float(0, 1, null=True),
    "datamodule.test_fraction": _float(0, 1, null=True),
    "datamodule.lookback": _int(1, null=True),
    "datamodule.horizon": _int(1, null=True),
    "datamodule.train_stride": _int(1, null=True),
    "datamodule.eval_stride": _int(1, null=True),
    "datamodule.standardize": _bool(null=True),
    "datamodule.scaling": _choice(None, "standard", "minmax", "none"),
}
_LOGGER = {"logger.kind": _choice("wandb", "csv", "none")}
_SEED = {"seed": _int()}
_SAMPLING = {
    "num_samples": _int(1),
    "num_diffusion_steps": _int(1, null=True),
    "num_directions": _int(1),
    "device": _device,
    "num_threads": _int(1, null=True),
}

RULES: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "train": {**_SEED, **_TRAINER, **_DATA, **_LOGGER, "fourier_transform": _bool()},
    "sample": {
        **_SEED, **_SAMPLING, **_CACHE, **_LOGGER, "sample_batch_size": _int(1), "use_cache": _bool(null=True),
        "progress": _bool(), "sampler.steps": _int(1, null=True),
        # the older `solver=` alias (null: the sampler group decides)
        "solver": _choice(None, "auto", "ddpm", "ddim", "dpm_solver++", "dpmpp", "euler_maruyama", "pf_ode"),
        "fourier_transform": _bool(null=True),
        # the verdict's settings (conf/quality/), checked before sampling so a typo does not cost the samples
        "quality.enabled": _bool(), "quality.num_runs": _int(1), "quality.context_fid_iterations": _int(1, null=True),
        "quality.discriminative_iterations": _int(1), "quality.reference_size": _int(2, null=True),
        "quality.num_threads": _int(1, null=True),
    },
    "evaluate": {
        **_SEED, **_LOGGER, "mode": _choice("paper", "fast"), "num_runs": _int(1, null=True), "scale": _choice("minmax", "none"),
        "num_threads": _int(1, null=True), "overwrite": _bool(), "device": _device, "set": _choice("model", "gaussian", "held_out"),
    },
    "benchmark_cache": {
        **_SEED, **_SAMPLING, **_CACHE, "repeats": _int(1), "warmup": _int(0), "num_seeds": _int(1),
        "batch_sizes": _ints(1), "context_fid.iterations": _int(1), "context_fid.runs": _int(0),
    },
    "ablation_cache": {**_SEED, **_SAMPLING, **_CACHE, "batch_size": _int(1), "repeats": _int(1), "warmup": _int(0)},
    "forecast": {
        **_SEED, **_TRAINER, **_DATA, "timing_only": _bool(), "eval.num_samples": _int(1), "eval.max_windows": _int(1, null=True),
        "eval.stride": _int(1, null=True), "eval.sample_batch_size": _int(1), "eval.split": _choice("train", "val", "test"),
        "timing.horizons": _ints(1), "timing.repeats": _int(1), "timing.num_samples": _int(1),
    },
}


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v)


def check_rules(cfg: DictConfig, rules: dict[str, Callable[[Any], str | None]]) -> None:
    for key, rule in rules.items():
        try:
            value = _get(cfg, key)
        except Exception as err:  # an interpolation that cannot be resolved
            raise ConfigError(f"{key} cannot be resolved ({str(err).splitlines()[0]}); fix the override of {key}.") from None
        if value is _MISSING:
            continue
        problem = rule(value)
        if problem:
            raise ConfigError(f"{key}={_show(value)} {problem}; fix it on the command line ({key}=...).")


def _check_not_dir(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if value in (_MISSING, None, ""):
        return
    p = Path(str(value)).expanduser()
    if p.is_dir():
        raise ConfigError(f"{key}={value} is a folder; give a file name, e.g. {key}={p / 'results.json'}.")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{key}={value}: '{parent}' is a file, not a folder; choose another {key}.")


def _check_folder(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if value in (_MISSING, None, ""):
        return
    p = Path(str(value)).expanduser()
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise ConfigError(f"{key}={value}: '{q}' is a file, not a folder; choose another {key}.")


def _check_model_run(cfg: DictConfig, command: str) -> None:
    """model_id names a run inside runs_dir whose run.json and config.yaml can be read."""
    from tsdiff.runs import read_run_info, resolve_run_dir
    from tsdiff.tasks.common import load_run_config

    model_id = _get(cfg, "model_id")
    if model_id in (_MISSING, None, ""):
        return
    if command == "evaluate" and (_get(cfg, "real_path") not in (_MISSING, None) or _get(cfg, "fake_path") not in (_MISSING, None)):
        return  # the task explains "model_id or real_path/fake_path, not both"
    run_dir = resolve_run_dir(model_id, _get(cfg, "runs_dir"), require="samples" if command == "evaluate" else "checkpoint")
    info = read_run_info(run_dir)
    if str(model_id) == "latest":
        cfg.model_id = run_dir.name  # resolved once, with this command's needs (printed by resolve_run_dir)
    elif command != "evaluate" and info.get("status", "done") != "done":
        from tsdiff.runs import describe_status

        print(f"[tsdiff] note: run '{run_dir.name}' is {describe_status(info)}; using its last checkpoint", flush=True)
    if command == "evaluate":
        return  # evaluate reads the run's samples, not its model
    train_cfg = load_run_config(run_dir)
    if command == "forecast":
        target = str(info.get("model_target") or (train_cfg.get("model") or {}).get("_target_", ""))
        if "TimeDiff" not in target:
            raise ConfigError(
                f"run '{run_dir.name}' is not a TimeDiff run (it trained {target or 'an unknown model'}); pass the id of a "
                "run from `python cmd/train.py model=timediff_ci datamodule=forecast_...`, or model_id=null to train one here."
            )
    elif "TimeDiff" in str(info.get("model_target", "")):
        raise ConfigError(
            f"run '{run_dir.name}' is a TimeDiff forecasting run; score it with `python cmd/forecast.py model_id={run_dir.name}`."
        )


def _check_train(cfg: DictConfig) -> None:
    from tsdiff.runs import check_run_id

    runs_dir = Path(str(cfg.runs_dir))
    for key in ("run_id", "resume"):
        value = _get(cfg, key)
        if value not in (_MISSING, None, ""):
            check_run_id(value, key)
    run_id, resume = _get(cfg, "run_id"), _get(cfg, "resume")
    if resume not in (_MISSING, None, "") and run_id not in (_MISSING, None, "") and str(run_id) != str(resume):
        raise ConfigError(f"run_id={run_id} and resume={resume} disagree; resume=<run_id> alone continues that run.")
    from tsdiff.tasks.common import is_global_zero

    # the other processes of a distributed run start after rank 0 made the folder: only rank 0 checks
    if resume in (_MISSING, None, "") and run_id not in (_MISSING, None, "") and (runs_dir / str(run_id)).exists() \
            and is_global_zero():
        raise ConfigError(
            f"run_id={run_id}: run folder {runs_dir / str(run_id)} already exists and tsdiff never overwrites a run; "
            f"continue it with resume={run_id}, or choose another run_id (or none for a fresh one)."
        )


def command_of(fn: Callable[..., Any]) -> str:
    """``tsdiff.tasks.sample.run`` -> ``sample``."""
    return str(getattr(fn, "__module__", "")).rsplit(".", 1)[-1]


def validate(cfg: Any, command: str) -> None:
    """Check ``cfg`` of ``command`` (train, sample, evaluate, forecast, benchmark_cache, ablation_cache)."""
    if not isinstance(cfg, DictConfig) or command not in RULES:
        return
    check_rules(cfg, RULES[command])
    _check_folder(cfg, "runs_dir")
    for key in ("results_path", "plot_path"):
        _check_not_dir(cfg, key)
    _check_folder(cfg, "output_dir")
    _check_folder(cfg, "data_root")
    if command == "evaluate":
        for key in ("real_path", "fake_path"):
            value = _get(cfg, key)
            if value not in (_MISSING, None, "") and not Path(str(value)).expanduser().is_file():
                raise ConfigError(f"{key}={value}: no such file; pass an existing .npy array of shape (N, length, channels).")
    if command == "forecast" and _get(cfg, "eval.antithetic") is True and _get(cfg, "eval.num_samples") not in (_MISSING, None) \
            and int(_get(cfg, "eval.num_samples")) % 2:
        raise ConfigError(f"eval.num_samples={_get(cfg, 'eval.num_samples')} is odd but eval.antithetic=true samples in pairs; "
                          "use an even eval.num_samples (e.g. 10) or eval.antithetic=false.")
    if command == "train":
        _check_train(cfg)
    else:
        _check_model_run(cfg, command)
