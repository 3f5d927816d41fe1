"""``python cmd/train.py``: train a model on a datamodule and save the run folder; ``resume=<run_id>`` continues one.

The run folder (``<runs_dir>/<run_id>/``) holds the resolved config, ``run.json`` and
``checkpoints/last.ckpt`` (see :mod:`tsdiff.runs`). An existing run is never overwritten: a given
``run_id`` that already exists is an error.

Lifecycle (``run.json``'s ``status``): ``training`` while the process runs; ``done`` when it finished;
``interrupted`` after Ctrl+C (the first one stops after the current batch and saves ``last.ckpt``; a
second stops at once) or SIGTERM (Lightning stops at the next batch, a checkpoint is saved); ``failed``
with the error when training raised after a checkpoint existed. A run that fails before its first
checkpoint is removed again (it holds nothing to resume or sample). ``resume=<run_id>`` (or ``latest``)
restarts from ``last.ckpt`` with the run's own ``config.yaml``; Lightning restores the weights (EMA
included, it lives in the model), optimizer, LR schedule, callbacks and the epoch/step counters, so the
loss curve continues where it stopped. A stop inside an epoch (``max_steps``, Ctrl+C, SIGTERM) is saved as
an unfinished epoch and resumed inside it (:mod:`tsdiff.tasks.resume_state`). Only ``trainer.*`` and ``logger`` may be changed on resume (e.g.
``trainer.max_epochs=60`` to train a finished run longer).

Models plug in through Hydra: ``cfg.model`` (or, when it is null, ``cfg.score_model``) is instantiated
with the data facts from the datamodule: ``datamodule.model_kwargs()`` when the datamodule defines it,
else ``n_channels`` and ``max_len``. A model may define ``on_datamodule_ready(datamodule)`` (e.g. to
take what it needs from the training split) which :func:`fit` calls before ``trainer.fit``.

Distributed runs: only global rank 0 writes files (run folder, ``run.json``, checkpoints through
Lightning) or touches the logger's run summary; printed metrics are averaged over ranks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tsdiff.runs import (
    RunNotFoundError, atomic_write_json, new_run_id, process_alive, read_run_info, resolve_run_dir,
    update_run_info, utc_now,
)
from tsdiff.tasks.common import (
    build_logger, instantiate_model, is_global_zero, load_checkpoint_state, load_run_config, log,
    make_atomic_checkpoint_callback, save_config,
)
from tsdiff.tasks.resume_state import mid_epoch_resume_callback
from tsdiff.tasks.validate import ConfigError

_RUN_ENV = "TSDIFF_RUN_ID"
_RESUMABLE_KEYS = ("trainer", "logger")


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


class GracefulInterrupt:
    """First SIGINT: remember it (training stops after the current batch, with a checkpoint). Second: stop now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: Any = None

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if is_global_zero():
            print("\n[tsdiff] interrupt: stopping after this batch and saving a checkpoint (Ctrl+C again stops now)", flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _stop_on_interrupt_callback(interrupt: GracefulInterrupt):
    import pytorch_lightning as pl

    from tsdiff.models.callbacks import EMA

    class StopOnInterrupt(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if interrupt.signum is not None:
                trainer.should_stop = True
                for cb in trainer.callbacks:  # a run that stops to be resumed keeps its live weights too
                    if isinstance(cb, EMA):
                        cb.interrupted = True

        on_train_epoch_end = on_validation_end = lambda self, trainer, *a: StopOnInterrupt.on_train_batch_end(self, trainer)

    return StopOnInterrupt()


def _cli_overrides() -> list[str]:
    """The command-line overrides when running under Hydra (empty when called from Python)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # noqa: BLE001 - no Hydra context
        return []


def _resume_config(cfg: DictConfig) -> tuple[DictConfig, Path, dict[str, Any], list[str]]:
    """The saved config of run ``cfg.resume`` with the allowed ``trainer.*`` / ``logger`` overrides applied."""
    run_dir = resolve_run_dir(cfg.resume, cfg.runs_dir, quiet=not is_global_zero(), require="checkpoint", key="resume")
    info = read_run_info(run_dir)
    if is_global_zero() and info.get("status") == "training" and process_alive(info) and info.get("pid") != os.getpid():
        raise ConfigError(f"run '{run_dir.name}' is still training (process {info.get('pid')}); wait for it or stop it first.")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise RunNotFoundError(
            f"run '{run_dir.name}' has no checkpoint to resume from ({run_dir / 'checkpoints' / 'last.ckpt'}): it stopped "
            "before its first epoch ended. Delete that folder and train again."
        )
    saved = load_run_config(run_dir)
    changed = []
    for override in _cli_overrides():
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("resume", "runs_dir") or key.startswith("hydra"):
            continue
        if key.split(".", 1)[0] not in _RESUMABLE_KEYS:
            raise ConfigError(
                f"resume={run_dir.name} continues the run with its own config.yaml; '{override}' would change the model or "
                "data. Only trainer.* and logger may change on resume; start a new run for anything else."
            )
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
        changed.append(override)
    if info.get("status") == "done" and not any(c.startswith("trainer") for c in changed):
        raise ConfigError(
            f"run '{run_dir.name}' is done; to train it longer pass resume={run_dir.name} trainer.max_epochs=<more than "
            f"{saved.trainer.get('max_epochs')}>."
        )
    OmegaConf.update(saved, "resume", run_dir.name, force_add=True)
    OmegaConf.update(saved, "runs_dir", str(cfg.runs_dir), force_add=True)
    return saved, run_dir, info, changed


def run(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    resuming = bool(cfg.get("resume"))
    if resuming:
        cfg, run_dir, info, changed = _resume_config(cfg)
        run_id = run_dir.name
        inherited = True
    else:
        runs_dir = Path(cfg.runs_dir)
        # one id for every process of a distributed run: rank 0 draws it, children inherit it via the env
        run_id = cfg.get("run_id") or os.environ.get(_RUN_ENV)
        inherited = run_id is not None and cfg.get("run_id") is None
        if run_id is None:
            run_id = new_run_id(runs_dir)
        run_dir = runs_dir / str(run_id)
        if is_global_zero() and not inherited and run_dir.exists():
            raise FileExistsError(
                f"Run folder {run_dir} already exists; tsdiff never overwrites a run. Continue it with resume={run_id}, "
                "choose another run_id, or leave run_id unset for a fresh one."
            )
    os.environ[_RUN_ENV] = str(run_id)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    dm = instantiate(cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    model_kwargs = _model_kwargs(dm)
    model = instantiate_model(cfg, model_kwargs)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resuming:  # weights first, so one-off preparation the checkpoint already holds (AR pretraining) is skipped
        model.load_state_dict(load_checkpoint_state(ckpt)["state_dict"], strict=True)

    if is_global_zero():
        if resuming:
            info = update_run_info(run_dir, status="training", resumed=[*info.get("resumed", []), {"at": utc_now(), "overrides": changed}],
                                   pid=os.getpid(), host=socket.gethostname())
        else:
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
                "pid": os.getpid(),
                "host": socket.gethostname(),
            }
            atomic_write_json(run_dir / "run.json", info)
        print(f"tsdiff run_id: {run_id}  ({'resumed from step ' + str(load_step(ckpt)) if resuming else 'folder'} {run_dir})",
              flush=True)

    interrupt = GracefulInterrupt()
    try:
        result = _fit(cfg, model, dm, run_id, run_dir, ckpt if resuming else None, interrupt)
    except BaseException as err:
        _record_failure(err, run_dir, ckpt, resuming, interrupt)
        raise
    if interrupt.signum is not None:
        _record_interrupt(run_dir, ckpt, interrupt.signum)
    if is_global_zero():
        info = update_run_info(run_dir, status="done", finished=utc_now(), last_step=result["optimizer_steps"],
                               **{k: v for k, v in result.items() if k not in ("run_dir",)})
    _close_process_group()
    return result


def _close_process_group() -> None:
    """Close the process group Lightning opened for a multi-process run once the run is recorded. Left to interpreter
    exit, gloo's threads are torn down in no fixed order and a rank can abort ("terminate called without an active
    exception", exit status -6) after a run that finished fine; the barrier lets rank 0 finish its run record first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fit(cfg, model, dm, run_id, run_dir: Path, ckpt_path: Path | None, interrupt: GracefulInterrupt) -> dict[str, Any]:
    from hydra.utils import instantiate

    logger = build_logger(cfg.get("logger"), str(run_id), run_dir, project=cfg.get("project", "tsdiff"))
    if logger and is_global_zero():
        logger.log_hyperparams({"run_id": str(run_id), **OmegaConf.to_container(cfg, resolve=True)})
    start_step = load_step(ckpt_path)
    with interrupt:
        trainer, fit_s = fit(cfg, model, dm, root_dir=run_dir, logger=logger, ckpt_path=ckpt_path,
                             callbacks=[make_atomic_checkpoint_callback(run_dir / "checkpoints"),
                                        _stop_on_interrupt_callback(interrupt), mid_epoch_resume_callback()])

    metrics = _mean_over_ranks(trainer, {k: float(v) for k, v in trainer.callback_metrics.items()
                                         if getattr(v, "numel", lambda: 1)() == 1})
    replicas = _replica_spread(trainer, model)
    steps_this_call = trainer.global_step - start_step
    result = {
        "run_id": str(run_id),
        "run_dir": str(run_dir),
        "optimizer_steps": int(trainer.global_step),
        "fit_seconds": fit_s,
        "train_steps_per_s": steps_this_call / fit_s if fit_s > 0 else float("nan"),
        "metrics": metrics,
    }
    if replicas is not None:
        result["world_size"], result["replica_max_abs_diff"] = int(trainer.world_size), replicas
    if trainer.is_global_zero and logger and type(logger).__name__ == "WandbLogger":
        logger.experiment.summary["train_steps_per_s"] = result["train_steps_per_s"]  # rank 0 only: others hold a dummy
    if trainer.is_global_zero:
        log.info("trained %s: %d steps in %.1f s (%.2f steps/s)", run_id, trainer.global_step, fit_s, result["train_steps_per_s"])
        print(
            f"tsdiff run_id: {run_id}  steps: {trainer.global_step}  {result['train_steps_per_s']:.2f} steps/s  "
            f"val/loss: {metrics.get('val/loss', float('nan')):.4f}",
            flush=True,
        )
    return result


def load_step(ckpt_path: Path | None) -> int:
    return int(load_checkpoint_state(ckpt_path).get("global_step", 0)) if ckpt_path else 0


def _mean_over_ranks(trainer, metrics: dict[str, float]) -> dict[str, float]:
    """Scalar metrics averaged over the processes of a distributed run (each rank sees its own shard)."""
    if trainer.world_size <= 1 or not metrics:
        return metrics
    import torch

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=trainer.strategy.root_device)
    values = trainer.strategy.reduce(values, reduce_op="mean")
    return {k: float(v) for k, v in zip(keys, values.cpu())}


def _replica_spread(trainer, model) -> float | None:
    """Largest difference between the processes' copies of the trained weights and buffers (EMA average,
    ``data_std``/``data_mean``, ...) in a distributed run, ``None`` in a single process. DDP keeps the replicas
    equal by construction (same initial weights, averaged gradients, buffers fitted on the same training
    split); this checks it once after fitting: every rank gathers every tensor of the state dict, a
    non-zero spread is reported (and saved in ``run.json``), since the checkpoint holds rank 0's copy only."""
    if trainer.world_size <= 1:
        return None
    import torch
    from pytorch_lightning.strategies import DDPStrategy

    if not isinstance(trainer.strategy, DDPStrategy):  # FSDP & co. hold shards, not replicas
        return None

    spread = 0.0
    for name, value in model.state_dict().items():
        if not torch.is_floating_point(value):
            continue
        gathered = trainer.strategy.all_gather(value.detach().float().to(trainer.strategy.root_device))
        spread = max(spread, float((gathered - gathered[:1]).abs().max()))
    if spread > 0 and trainer.is_global_zero:
        log.warning("the %d processes ended with different weights/buffers (max |diff| %.3g); the checkpoint holds rank 0's",
                    trainer.world_size, spread)
    return spread


def _record_interrupt(run_dir: Path, ckpt: Path, signum: int) -> None:
    step = load_step(ckpt) if ckpt.is_file() else None
    if is_global_zero():
        update_run_info(run_dir, status="interrupted", interrupted=utc_now(), last_step=step)
        print(f"[tsdiff] run {run_dir.name} interrupted at step {step}; continue it with "
              f"`python cmd/train.py resume={run_dir.name} runs_dir={run_dir.parent}`", flush=True)
    raise SystemExit(128 + int(signum))


def _record_failure(err: BaseException, run_dir: Path, ckpt: Path, resuming: bool, interrupt: GracefulInterrupt) -> None:
    """Keep ``run.json`` true after an exception; remove a fresh run that has nothing worth keeping."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if not is_global_zero():
        return
    # Lightning turns a second Ctrl+C into SystemExit(1), SIGTERM into SIGTERMException (also a SystemExit)
    interrupted = interrupt.signum is not None or isinstance(err, (KeyboardInterrupt, SIGTERMException))
    code = 143 if isinstance(err, SIGTERMException) else 130
    if not ckpt.is_file() and not resuming:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[tsdiff] training stopped before the first checkpoint; removed the unfinished run folder {run_dir}", flush=True)
        if interrupted:
            raise SystemExit(code) from None
        return
    step = load_step(ckpt)
    if interrupted:
        update_run_info(run_dir, status="interrupted", interrupted=utc_now(), last_step=step)
        print(f"[tsdiff] run {run_dir.name} interrupted; last checkpoint at step {step}; continue it with "
              f"`python cmd/train.py resume={run_dir.name} runs_dir={run_dir.parent}`", flush=True)
        raise SystemExit(code) from None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    update_run_info(run_dir, status="failed", failed=utc_now(), last_step=step, error=f"{type(err).__name__}: {first}")
    print(f"[tsdiff] run {run_dir.name} failed at step {step} (checkpoint kept, status 'failed'); "
          f"after fixing the cause continue it with `python cmd/train.py resume={run_dir.name}`", flush=True)
