"""Pieces shared by the command-line tasks: loggers, atomic checkpoints, loading a trained run."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tsdiff.results import free_path
from tsdiff.runs import RunFileError, atomic_path, checkpoint_path, read_run_info

log = logging.getLogger("tsdiff")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (corrupt, or not matching its run's config)."""


def is_global_zero() -> bool:
    """True in the process that owns files in a (possibly distributed) run: ``RANK`` (torchrun, Lightning) when
    set, else the SLURM task id and the local rank (``srun`` starts every task itself, without ``RANK``)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return all(int(os.environ.get(k, 0)) == 0 for k in ("SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


# ---------------------------------------------------------------------- loggers
def wandb_logged_in() -> bool:
    """Whether wandb has credentials (env var or netrc entry), without importing wandb."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def build_logger(logger_cfg: DictConfig | None, run_id: str, run_dir: Path, project: str = "tsdiff"):
    """A Lightning logger from ``conf/logger/*.yaml`` (``kind: wandb | csv | none``).

    wandb runs offline (files in ``<run_dir>/wandb``) when the user is not logged in, so nothing waits on
    a server that cannot be reached; ``WANDB_MODE`` set by the user wins.
    """
    kind = "none" if logger_cfg is None else str(logger_cfg.get("kind", "none"))
    if kind == "none":
        return False
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        # a resumed run logs to csv-1/, csv-2/, ...: Lightning's CSV writer would replace the earlier metrics.csv
        return CSVLogger(save_dir=str(run_dir), name="", version=free_path(Path(run_dir) / "csv").name)
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        offline = logger_cfg.get("offline", "auto")
        if str(offline) == "auto":
            offline = not wandb_logged_in()
        mode = os.environ.get("WANDB_MODE")
        kwargs: dict[str, Any] = dict(
            project=logger_cfg.get("project", project), id=run_id, name=run_id, save_dir=str(run_dir),
            offline=bool(offline), log_model=False,
        )
        if mode == "disabled":
            kwargs["mode"] = "disabled"
            kwargs.pop("offline")
        return WandbLogger(**kwargs)
    raise ValueError(f"unknown logger kind '{kind}'; use logger=wandb, logger=csv or logger=none")


def log_metrics(logger, metrics: dict[str, float]) -> None:
    """Send flat numeric metrics to a Lightning logger (or nowhere when ``logger`` is falsy)."""
    if not logger:
        return
    flat = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    logger.log_metrics(flat)
    if hasattr(logger, "finalize"):
        logger.finalize("success")


# ---------------------------------------------------------------------- checkpoints
def make_atomic_checkpoint_callback(dirpath: Path):
    """A Lightning callback that writes ``last.ckpt`` after every epoch and at the end of fit, through a
    temporary file renamed into place, so an interrupted write never leaves a truncated checkpoint."""
    import pytorch_lightning as pl

    class AtomicLastCheckpoint(pl.Callback):
        def __init__(self, dirpath: Path):
            self.dirpath = Path(dirpath)

        def _save(self, trainer: "pl.Trainer") -> None:
            target = self.dirpath / "last.ckpt"
            tmp = self.dirpath / ".last.ckpt.tmp"
            # a full checkpoint (optimizer and loop state too, so a run can resume); every rank calls it,
            # rank 0 writes. (Lightning's `weights_only` here is about what is *saved*, not how it is loaded.)
            trainer.save_checkpoint(str(tmp), weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, target)
            trainer.strategy.barrier("tsdiff-checkpoint")

        def on_train_epoch_end(self, trainer, pl_module):
            self._save(trainer)

        def on_fit_end(self, trainer, pl_module):
            self._save(trainer)

        # Random-number state in the checkpoint, restored on resume, so that a resumed run draws the same data
        # order and diffusion noise as an uninterrupted one (Lightning saves no RNG state by itself).
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["tsdiff_rng"] = _rng_state()

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            if "tsdiff_rng" in checkpoint:
                _set_rng_state(checkpoint["tsdiff_rng"])

        def on_exception(self, trainer, pl_module, exception):
            # SIGTERM: Lightning stops at a batch boundary (every rank together), so the state is consistent
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
                self._save(trainer)

    return AtomicLastCheckpoint(dirpath)


def _rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as plain types (loadable with weights_only=True)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint_state(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); a clear error when it is corrupt."""
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"Checkpoint {ckpt} cannot be loaded ({type(err).__name__}: {str(err).split('. ')[0][:120]}). "
            "It is corrupt or not a tsdiff checkpoint; retrain, or pick another model_id."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"Checkpoint {ckpt} has no 'state_dict': it is not a Lightning checkpoint of a tsdiff model.")
    return state


def instantiate_model(train_cfg: DictConfig, model_kwargs: dict[str, Any]):
    """Build the system described by a training config (``model`` if set, else ``score_model``)."""
    from hydra.utils import instantiate

    model_cfg = train_cfg.model if train_cfg.get("model") is not None else train_cfg.score_model
    return instantiate(model_cfg, **model_kwargs)


def load_run_config(run_dir: Path) -> DictConfig:
    """A run's saved ``config.yaml``; :class:`RunFileError` naming the file when it is missing or corrupt."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise RunFileError(f"Run '{Path(run_dir).name}' has no config.yaml ({cfg_path}); it was not created by tsdiff's train command.")
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as err:  # yaml.YAMLError and OmegaConf's grammar errors have no common base
        raise RunFileError(
            f"{cfg_path} is corrupt ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}); "
            f"restore it, or delete the run folder {run_dir} and retrain."
        ) from None
    if not isinstance(cfg, DictConfig) or (cfg.get("model") is None and cfg.get("score_model") is None):
        raise RunFileError(f"{cfg_path} does not describe a model (no 'model' or 'score_model' entry); restore it or retrain.")
    return cfg


def _state_dict_mismatch(err: RuntimeError) -> str:
    """A short summary of a ``load_state_dict`` error (counts and a few key names, not every key)."""
    import re

    text = str(err)
    parts = []
    for line in text.splitlines():
        for label, word in (("Missing key(s)", "missing"), ("Unexpected key(s)", "unexpected")):
            if label in line:
                keys = re.findall(r'"([^"]+)"', line)
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {word} weights ({', '.join(keys[:3])}{more})")
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        parts.append(f"{len(shapes)} weights of another shape ({', '.join(shapes[:3])}{more})")
    return "; ".join(parts) or text.splitlines()[0][:200]


def load_run_model(run_dir: Path, device: str | torch.device = "cpu"):
    """Rebuild a run's model from its saved config and load its checkpoint weights (safely).

    Returns ``(model, train_cfg, run_info)``.
    """
    from hydra.errors import InstantiationException

    train_cfg = load_run_config(run_dir)
    info = read_run_info(run_dir)
    try:
        model = instantiate_model(train_cfg, info.get("model_kwargs", {}))
    except InstantiationException as err:
        raise RunFileError(
            f"{Path(run_dir) / 'config.yaml'} does not build a model ({str(err).splitlines()[0][:160]}); "
            "restore the run's config.yaml or retrain."
        ) from None
    state = load_checkpoint_state(checkpoint_path(run_dir), map_location="cpu")
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"The config of run '{Path(run_dir).name}' does not match its checkpoint {checkpoint_path(run_dir)}: "
            f"{_state_dict_mismatch(err)}. The run folder was edited or mixes two runs; restore config.yaml and "
            "last.ckpt of the same run, or retrain."
        ) from None
    model.to(device).eval()
    return model, train_cfg, info


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (what the commands print)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def save_config(cfg: DictConfig, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
