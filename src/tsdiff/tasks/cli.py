"""Run a task from a ``cmd/*.py`` entry point with user-facing errors instead of tracebacks.

Mistakes a user can fix (an unknown run id, a corrupt checkpoint or run file, a malformed CSV, missing
Kaggle credentials, an out-of-range parameter...) are raised by tsdiff with messages that name the problem
and the fix; here they are printed as one line and the process exits with status 2. The options are
checked before the task starts (:mod:`tsdiff.tasks.validate`), and folders the task created are removed
again if it fails and leaves them empty. Set ``TSDIFF_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

USER_ERROR_EXIT = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tsdiff.runs import RunNotFoundError
    from tsdiff.tasks.common import CheckpointError

    errors: list[type[BaseException]] = [
        RunNotFoundError, CheckpointError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
        PermissionError, ValueError, OmegaConfBaseException, HydraException,
    ]
    try:
        from tsdiff.data.errors import DataFormatError, DatasetUnavailableError

        errors += [DataFormatError, DatasetUnavailableError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def one_line(err: BaseException) -> str:
    """``tsdiff error (Kind): message`` on one line; an instantiation error shows its cause."""
    from hydra.errors import InstantiationException

    cause = err
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        cause = err.__cause__
    text = str(cause) or repr(cause)
    if isinstance(err, InstantiationException) and cause is not err:
        target = str(err).split("'")[1] if str(err).count("'") >= 2 else "an object"
        text = f"cannot build {target}: {text}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) > 600:
        text = text[:600] + " ..."
    return f"tsdiff error ({type(cause).__name__}): {text}"


_task_started = False


def main_guard(hydra_main: Callable[[], Any]) -> None:
    """Run a ``cmd/*.py`` Hydra main; a bad override that Hydra itself rejects (unknown key, syntax) exits with
    status 2 like every other user error. Hydra reports those with exit status 1 before the task starts; a
    crash inside the task (a bug: traceback shown) keeps status 1."""
    try:
        hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _task_started:
            print("tsdiff error (override): Hydra rejected the command line (see above); fix the override, e.g. use "
                  "+key=value to add a key the config does not have.", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)
        raise


def run_task(fn: Callable[[Any], Any], cfg: Any) -> Any:
    from tsdiff.results import track_new_dirs

    global _task_started
    _task_started = True
    from tsdiff.tasks.validate import command_of, validate

    try:
        with track_new_dirs():
            validate(cfg, command_of(fn))
            return fn(cfg)
    except _user_errors() as err:
        if os.environ.get("TSDIFF_DEBUG"):
            raise
        print(one_line(err), file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
