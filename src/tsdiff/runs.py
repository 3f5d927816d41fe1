"""Run folders: where a training run, its checkpoint and its samples live, and safe (atomic) writes.

Layout of one run (``<root>`` is ``lightning_logs`` unless configured otherwise)::

    <root>/<run_id>/
        config.yaml                  resolved Hydra config of the training run
        run.json                     run id, creation time, model target, data facts
        checkpoints/last.ckpt        Lightning checkpoint (loaded with weights_only=True)
        samples/<sample_id>/
            samples.npy              (num_samples, length, channels) float32, in the datamodule's
                                     standardized space
            config.yaml              resolved config of the sampling command
            metrics.json             evaluation results

Nothing here ever overwrites a file that a user already has: new folders get fresh ids, and every
file is written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

DEFAULT_ROOT = "lightning_logs"
_ALPHABET = string.ascii_lowercase + string.digits


class RunNotFoundError(FileNotFoundError):
    """Raised when a ``model_id`` does not name a run folder."""


def new_run_id(root: str | os.PathLike | None = None, length: int = 8) -> str:
    """A fresh wandb-style id (8 lowercase letters/digits) that is not yet used under ``root``."""
    root_path = Path(root) if root is not None else None
    while True:
        run_id = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if root_path is None or not (root_path / run_id).exists():
            return run_id


def list_runs(root: str | os.PathLike = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` (those holding a ``run.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "run.json").is_file()]
    return sorted(runs, key=lambda p: (_created(p), p.name))


def _created(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "run.json").read_text())["created"]
    except (OSError, ValueError, KeyError):
        return ""


def resolve_run_dir(model_id: str | None, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Folder of run ``model_id`` under ``root``; ``latest`` picks the newest run.

    Raises :class:`RunNotFoundError` naming the runs that do exist, so a typo is easy to fix.
    """
    root = Path(root)
    runs = list_runs(root)
    if model_id is None or str(model_id).strip() == "":
        raise RunNotFoundError(
            "No model_id given. Pass model_id=<run_id> (a folder name under "
            f"{root}/) or model_id=latest."
        )
    model_id = str(model_id)
    if model_id == "latest":
        if not runs:
            raise RunNotFoundError(
                f"model_id=latest but there is no run under '{root.resolve()}'. "
                "Train one first with `python cmd/train.py`, or point runs_dir=<folder> at your runs."
            )
        return runs[-1]
    run_dir = root / model_id
    if not (run_dir / "run.json").is_file():
        known = ", ".join(p.name for p in runs[-10:]) or "none"
        raise RunNotFoundError(
            f"Unknown model_id '{model_id}': no run folder '{run_dir}' with a run.json. "
            f"Known runs under '{root}': {known}. Use one of them or model_id=latest."
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
    """Create and return a new, never-used sub-folder of ``parent`` (timestamp + random suffix)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    while True:
        child = parent / f"{prefix}{stamp}-{new_run_id(length=4)}"
        try:
            child.mkdir()
            return child
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` atomically.

    On failure the temporary file is removed and ``path`` (if it existed) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))
    return Path(path)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
