"""``python cmd/train.py``: train a model on a datamodule and save the run folder.

The run folder (``<runs_dir>/<run_id>/``) holds the resolved config, ``run.json`` and
``checkpoints/last.ckpt`` (see :mod:`tsdiff.runs`). An existing run is never overwritten: a given
``run_id`` that already exists is an error.

Models plug in through Hydra: ``cfg.model`` (or, when it is null, ``cfg.score_model``) is instantiated
with the data facts from the datamodule: ``datamodule.model_kwargs()`` when the datamodule defines it,
else ``n_channels`` and ``max_len``. A model may define ``on_datamodule_ready(datamodule)`` (e.g. to
take what it needs from the training split) which :func:`fit` calls before ``trainer.fit``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tsdiff.runs import atomic_write_json, new_run_id, utc_now
from tsdiff.tasks.common import build_logger, instantiate_model, is_global_zero, log, make_atomic_checkpoint_callback, save_config

_RUN_ENV = "TSDIFF_RUN_ID"


def _model_kwargs(dm) -> dict[str, Any]:
    if hasattr(dm, "model_kwargs"):
        return dict(dm.model_kwargs())
    return {"n_channels": int(dm.n_channels), "max_len": int(dm.seq_len)}


def fit(cfg: DictConfig, model, dm, *, root_dir: Path, logger=False, callbacks: list | None = None,
        ckpt_path: Path | None = None):
    """The one training path (``cmd/train.py`` and the in-process training of ``cmd/forecast.py``): hand
    the datamodule to the model (``on_datamodule_ready``, if the model defines it), build the Trainer
    from ``cfg.trainer`` and fit (from ``ckpt_path`` when resuming). The model adds its own recipe
    through ``configure_callbacks()``. Returns ``(trainer, fit_seconds)``."""
    from hydra.utils import instantiate

    if hasattr(model, "on_datamodule_ready"):
        model.on_datamodule_ready(dm)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=list(callbacks or []), enable_checkpointing=False,
                          default_root_dir=str(root_dir))
    start = time.perf_counter()
    # weights_only: safe loading of anything Lightning restores
    trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    return trainer, time.perf_counter() - start


def run(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    runs_dir = Path(cfg.runs_dir)

    # one id for every process of a distributed run: rank 0 draws it, children inherit it via the env
    run_id = cfg.get("run_id") or os.environ.get(_RUN_ENV)
    inherited = run_id is not None and cfg.get("run_id") is None
    if run_id is None:
        run_id = new_run_id(runs_dir)
    run_dir = runs_dir / str(run_id)
    if is_global_zero() and not inherited and run_dir.exists():
        raise FileExistsError(
            f"Run folder {run_dir} already exists; tsdiff never overwrites a run. Choose another run_id "
            "or leave run_id unset for a fresh one."
        )
    os.environ[_RUN_ENV] = str(run_id)

    dm = instantiate(cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    model_kwargs = _model_kwargs(dm)
    model = instantiate_model(cfg, model_kwargs)

    if is_global_zero():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        info = {
            "run_id": str(run_id),
            "created": utc_now(),
            "status": "training",
            "model_target": (cfg.model if cfg.get("model") is not None else cfg.score_model)["_target_"],
            "datamodule_target": cfg.datamodule["_target_"],
            "model_kwargs": model_kwargs,
            "num_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        }
        atomic_write_json(run_dir / "run.json", info)
    print(f"tsdiff run_id: {run_id}  (folder {run_dir})", flush=True)

    logger = build_logger(cfg.get("logger"), str(run_id), run_dir, project=cfg.get("project", "tsdiff"))
    if logger:
        logger.log_hyperparams({"run_id": str(run_id), **OmegaConf.to_container(cfg, resolve=True)})
    trainer, fit_s = fit(cfg, model, dm, root_dir=run_dir, logger=logger,
                         callbacks=[make_atomic_checkpoint_callback(run_dir / "checkpoints")])

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    result = {
        "run_id": str(run_id),
        "run_dir": str(run_dir),
        "optimizer_steps": int(trainer.global_step),
        "fit_seconds": fit_s,
        "train_steps_per_s": trainer.global_step / fit_s if fit_s > 0 else float("nan"),
        "metrics": metrics,
    }
    if is_global_zero():
        info.update(status="done", finished=utc_now(), **{k: v for k, v in result.items() if k not in ("run_dir",)})
        atomic_write_json(run_dir / "run.json", info)
    if logger and hasattr(logger, "experiment") and cfg.logger.get("kind") == "wandb":
        logger.experiment.summary["train_steps_per_s"] = result["train_steps_per_s"]
    log.info("trained %s: %d steps in %.1f s (%.2f steps/s)", run_id, trainer.global_step, fit_s, result["train_steps_per_s"])
    print(
        f"tsdiff run_id: {run_id}  steps: {trainer.global_step}  {result['train_steps_per_s']:.2f} steps/s  "
        f"val/loss: {metrics.get('val/loss', float('nan')):.4f}",
        flush=True,
    )
    return result
