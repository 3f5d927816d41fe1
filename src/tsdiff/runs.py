"""Run folders: where a training run, its checkpoint and its samples live, and safe (atomic) writes.

Layout of one run (``<root>`` is ``lightning_logs`` unless configured otherwise)::

    <root>/<run_id>/
        config.yaml                  resolved Hydra config of the training run
        run.json                     run id, creation time, model target, data facts, status
                                     (training | interrupted | failed | done), last_step, resumes
        checkpoints/last.ckpt        Lightning checkpoint (loaded with weights_only=True)
        samples/<sample_id>/
            samples.npy              (num_samples, length, channels) float32, in the datamodule's
                                     standardized space
            config.yaml              resolved config of the sampling command
            metrics.json             evaluation results

Nothing here ever overwrites a file that a user already has: new folders get fresh ids, result files go
through :func:`tsdiff.results.write_result` (atomic, a free name when taken), and the files a run owns
(``run.json``, ``config.yaml``) are replaced atomically. Run ids are plain folder names directly under the
runs folder (:func:`check_run_id`: no ``/``, ``..`` or hidden names), and ``latest`` means the newest run
that can actually be used (:func:`run_problem`), printing what it skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import string
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tsdiff.results.io import _json_default, atomic_replace, make_dirs, write_result

DEFAULT_ROOT = "lightning_logs"
_ALPHABET = string.ascii_lowercase + string.digits


class RunNotFoundError(FileNotFoundError):
    """Raised when a ``model_id`` does not name a usable run folder."""


class RunFileError(ValueError):
    """A file of a run folder (``run.json``, ``config.yaml``) that cannot be read; the message names it."""


STATUSES = ("training", "interrupted", "failed", "done")
_ID_CHARS = set(string.ascii_letters + string.digits + "-_.")


def check_run_id(run_id: Any, key: str = "model_id") -> str:
    """A run id that names one folder directly inside ``runs_dir`` (no ``/``, ``..``, or hidden names)."""
    rid = str(run_id).strip()
    if not rid or rid.startswith(".") or not set(rid) <= _ID_CHARS:
        raise RunNotFoundError(
            f"{key}='{run_id}' is not a run id: use the folder name of a run directly under runs_dir "
            "(letters, digits, '-', '_', '.'; no '/' or '..'), or runs_dir=<other folder> to look elsewhere."
        )
    return rid


def new_run_id(root: str | os.PathLike | None = None, length: int = 8) -> str:
    """A fresh wandb-style id (8 lowercase letters/digits) that is not yet used under ``root``."""
    root_path = Path(root) if root is not None else None
    while True:
        run_id = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if root_path is None or not (root_path / run_id).exists():
            return run_id


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run as a dict; :class:`RunFileError` naming the file when it is unreadable."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunNotFoundError(f"{path} is missing: '{Path(run_dir).name}' is not a tsdiff run folder.") from None
    except (OSError, ValueError) as err:
        raise RunFileError(
            f"{path} is corrupt ({type(err).__name__}: {str(err)[:80]}); restore it from a backup, or delete the "
            f"run folder {Path(run_dir)} and retrain."
        ) from None
    if not isinstance(info, dict):
        raise RunFileError(f"{path} does not hold a JSON object; restore it or delete the run folder {Path(run_dir)}.")
    return info


def update_run_info(run_dir: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Rewrite ``run.json`` atomically with ``changes`` applied (status, step, error, ...)."""
    info = read_run_info(run_dir)
    info.update(changes)
    atomic_write_json(Path(run_dir) / "run.json", info)
    return info


def list_runs(root: str | os.PathLike = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` (those holding a ``run.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "run.json").is_file()]
    return sorted(runs, key=lambda p: (_created(p), p.name))


def _created(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "run.json").read_text())["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def run_problem(run_dir: Path, require: str = "any") -> str | None:
    """Why a run is not usable, or None. ``require``: ``checkpoint`` (to sample or resume it: a readable
    run.json, config.yaml and a non-corrupt last.ckpt), ``samples`` (to evaluate it: a samples/<id>/samples.npy),
    ``any`` (either)."""
    try:
        read_run_info(run_dir)
    except (RunFileError, RunNotFoundError):
        return "corrupt run.json"
    problems = []
    if require in ("checkpoint", "any"):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not (run_dir / "config.yaml").is_file():
            problems.append("no config.yaml")
        elif not ckpt.is_file():
            problems.append("no checkpoint")
        elif not zipfile.is_zipfile(ckpt):
            problems.append("corrupt checkpoint")
        else:
            return None
    if require in ("samples", "any"):
        if any((run_dir / "samples").glob("*/samples.npy")):
            return None
        problems.append("no samples")
    return problems[0] if problems else None


def describe_status(info: dict[str, Any]) -> str:
    """``done``, ``interrupted at step N``, ... and a hint when a ``training`` run's process is gone."""
    status = str(info.get("status", "unknown"))
    if status != "done" and info.get("last_step") is not None:
        status += f" at step {info['last_step']}"
    if info.get("status") == "training" and not process_alive(info):
        status += " (its process is gone: killed?)"
    return status


def process_alive(info: dict[str, Any]) -> bool:
    """Whether the process that wrote ``info`` (pid on this host) still runs; True when unknown."""
    pid, host = info.get("pid"), info.get("host")
    if not pid or host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def resolve_run_dir(model_id: str | None, root: str | os.PathLike = DEFAULT_ROOT, quiet: bool = False,
                    require: str = "any", key: str = "model_id") -> Path:
    """Folder of run ``model_id`` under ``root``; ``latest`` picks the newest usable run (see :func:`run_problem`).

    ``latest`` prints which run it picked and which newer ones it skipped (and why). Raises
    :class:`RunNotFoundError` naming the runs that do exist, so a typo is easy to fix.
    """
    root = Path(root)
    if model_id is None or str(model_id).strip() == "":
        raise RunNotFoundError(
            "No model_id given. Pass model_id=<run_id> (a folder name under "
            f"{root}/) or model_id=latest."
        )
    model_id = check_run_id(model_id, key)
    runs = list_runs(root)
    if model_id == "latest":
        skipped = []
        for run_dir in reversed(runs):
            problem = run_problem(run_dir, require)
            if problem is None:
                if not quiet:
                    status = describe_status(read_run_info(run_dir))
                    note = f"; skipped newer: {', '.join(skipped)}" if skipped else ""
                    print(f"[tsdiff] {key}=latest -> run '{run_dir.name}' ({status}){note}", flush=True)
                return run_dir
            skipped.append(f"{run_dir.name} ({problem})")
        detail = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise RunNotFoundError(
            f"{key}=latest but there is no run under '{root.resolve()}' with a usable {'checkpoint' if require == 'checkpoint' else 'checkpoint or samples' if require == 'any' else 'samples'}{detail}. "
            "Train one first with `python cmd/train.py` (or resume one with resume=<run_id>), or point runs_dir=<folder> at your runs."
        )
    run_dir = root / model_id
    if not (run_dir / "run.json").is_file():
        known = ", ".join(p.name for p in runs[-10:]) or "none"
        raise RunNotFoundError(
            f"Unknown {key} '{model_id}': no run folder '{run_dir}' with a run.json. "
            f"Known runs under '{root}': {known}. Use one of them or {key}=latest."
        )
    return run_dir


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """The checkpoint of a run; a clear error when it is missing."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        candidates = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
        if candidates:
            return candidates[-1]
        raise FileNotFoundError(
            f"Run '{run_dir.name}' has no checkpoint ({ckpt} is missing). The training run may have "
            "been interrupted before its first epoch ended; train again or pick another model_id."
        )
    return ckpt


def new_child_dir(parent: str | os.PathLike, prefix: str = "") -> Path:
    """Create and return a new, never-used sub-folder of ``parent`` (timestamp + random suffix).

    Created through :func:`tsdiff.results.make_dirs`, so a command that fails removes it if it is empty.
    """
    parent = make_dirs(parent)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    while True:
        child = parent / f"{prefix}{stamp}-{new_run_id(length=4)}"
        if child.exists():
            continue
        return make_dirs(child)


# Files a run owns and updates in place (run.json, its config.yaml) are replaced atomically; result files
# go through tsdiff.results.write_result, which never replaces anything.
atomic_path = atomic_replace


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """Kept for callers outside tsdiff; result files use :func:`tsdiff.results.write_result`."""
    return write_result(path, array)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
