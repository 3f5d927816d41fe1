"""Run a task from a ``cmd/*.py`` entry point with user-facing errors instead of tracebacks.

Mistakes a user can fix (an unknown run id, a corrupt checkpoint, a malformed CSV, missing Kaggle
credentials, an out-of-range parameter...) are raised by tsdiff with messages that name the problem and
the fix; here they are printed as one line and the process exits with status 2. Set ``TSDIFF_DEBUG=1``
to get the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


def _user_errors() -> tuple[type[BaseException], ...]:
    from tsdiff.runs import RunNotFoundError
    from tsdiff.tasks.common import CheckpointError

    errors: list[type[BaseException]] = [RunNotFoundError, CheckpointError, FileExistsError, FileNotFoundError, ValueError]
    try:
        from tsdiff.data.errors import DataFormatError, DatasetUnavailableError

        errors += [DataFormatError, DatasetUnavailableError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def run_task(fn: Callable[[Any], Any], cfg: Any) -> Any:
    try:
        return fn(cfg)
    except _user_errors() as err:
        if os.environ.get("TSDIFF_DEBUG"):
            raise
        print(f"tsdiff error ({type(err).__name__}): {err}", file=sys.stderr, flush=True)
        sys.exit(2)
