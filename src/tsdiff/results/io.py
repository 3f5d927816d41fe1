"""Writing result files: atomic, and never over a file that already exists.

One policy for every result a command writes (JSON, ``.npy``, YAML, PNG, text):

* **atomic**: the content goes to a temporary file in the target folder, which is then moved into place,
  so an interrupted write never leaves a truncated file (nor a half-written one replacing a good one);
* **never overwrite**: if the requested name is taken, the first free ``<stem>-<k><suffix>`` beside it is
  used instead and one line says so (``s.json already exists ... wrote s-1.json instead``). The free name is
  claimed with a hard link, which fails when another process took the name first, so two concurrent
  writers cannot clobber each other either. ``overwrite=True`` is the only way to replace a file, and only
  a caller that the user told to do so passes it (``cmd/evaluate.py overwrite=true``).

Folders a command creates are recorded (:func:`make_dirs`) so that a command that fails can remove the
ones it left empty (:func:`track_new_dirs`); nothing else is ever deleted.

This package imports nothing else from tsdiff, so every layer may use it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["write_result", "free_path", "make_dirs", "track_new_dirs", "atomic_replace"]

_created_dirs: list[list[Path]] = []  # a stack: one list per active track_new_dirs()


def free_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-<k><suffix>`` beside it."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    k = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        k += 1


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` that remembers which folders it created (for clean-up after a failed command)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    if _created_dirs:
        _created_dirs[-1].extend(missing)  # deepest first
    return path


@contextmanager
def track_new_dirs() -> Iterator[list[Path]]:
    """Record folders made through :func:`make_dirs`; if the block raises, remove those left empty."""
    _created_dirs.append([])
    ok = False
    try:
        yield _created_dirs[-1]
        ok = True
    finally:
        made = _created_dirs.pop()
        if not ok:
            for d in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                try:
                    d.rmdir()  # only succeeds when empty
                except OSError:
                    pass


def _serializer(path: Path, data: Any) -> Callable[[Path], None]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
        return lambda tmp: tmp.write_text(text)
    if suffix == ".npy":
        import numpy as np

        arr = np.asarray(data)
        if arr.dtype == object:
            raise TypeError(f"refusing to write an object array to {path}: it could only be read back with pickle")

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        return save
    if suffix in (".yaml", ".yml"):
        if not isinstance(data, str):
            from omegaconf import OmegaConf

            data = OmegaConf.to_yaml(data, resolve=True)
        return lambda tmp: tmp.write_text(data)
    if suffix == ".png":
        return lambda tmp: data.savefig(tmp, dpi=110, format="png")  # a matplotlib figure
    if isinstance(data, bytes):
        return lambda tmp: tmp.write_bytes(data)
    return lambda tmp: tmp.write_text(str(data))


def write_result(path: str | os.PathLike, data: Any, *, overwrite: bool = False, quiet: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically, never replacing an existing file; return the path written.

    The format follows the suffix: ``.json`` (``json.dumps``, numpy scalars/arrays allowed), ``.npy``
    (``np.save``, no pickles), ``.yaml`` (a string or an OmegaConf config), ``.png`` (a matplotlib
    figure), anything else text or bytes. See the module docstring for the policy.
    """
    path = Path(path).expanduser()
    write = _serializer(path, data)
    make_dirs(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
            return path
        target = path
        while True:
            target = free_path(target)
            try:
                _claim(tmp, target)
                break
            except FileExistsError:
                continue  # someone took that name meanwhile: try the next one
        if target != path and not quiet:
            print(f"[tsdiff] {path} already exists and is never overwritten; wrote {target} instead.", flush=True)
        return target
    finally:
        if tmp.exists():
            tmp.unlink()


def _claim(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if ``target`` does not exist (atomically where links work)."""
    try:
        os.link(tmp, target)  # fails with FileExistsError if the name is taken
        return
    except FileExistsError:
        raise
    except OSError as err:  # no hard links on this file system: reserve the name, then replace it
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    os.replace(tmp, target)


@contextmanager
def atomic_replace(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``, renamed onto ``path`` on success (for files tsdiff owns
    and updates in place: ``run.json``, a run's ``config.yaml``, ``last.ckpt``). Removed on failure."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
