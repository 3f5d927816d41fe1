"""Lazy boundary to the Kaggle API.

The reference implementation (fdiff, Crabbé et al. 2024) calls ``import kaggle;
kaggle.api.authenticate(); kaggle.api.dataset_download_files(slug, path=data_dir, unzip=True)``
inside ``download_data``. We keep that exact call, but guard it because the ``kaggle`` package is
hostile to library use:

- without credentials, ``KaggleApi.authenticate()`` prints a help text and calls ``exit(1)``, i.e.
  raises ``SystemExit`` - which a plain ``except Exception`` does not catch, so an unguarded call
  ends the whole training process (older kaggle versions even do this at ``import kaggle``);
- a malformed ``kaggle.json`` raises ``OSError``/``ValueError``;
- kaggle 2.2.x imports ``six`` without declaring it, so the import itself can fail with
  ``ModuleNotFoundError``.

All of these become one :class:`~tsdiff.data.errors.DatasetUnavailableError` whose message names
both remedies (credentials, or a manual download into the exact ``data_dir``). ``kaggle`` is imported
only inside :func:`load_kaggle_api`, so a present local copy never touches the network or the
package.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Iterable

from tsdiff.data.errors import DatasetUnavailableError

__all__ = ["load_kaggle_api", "download_kaggle_dataset", "unavailable_message", "missing_files"]

from tsdiff.results import make_dirs

log = logging.getLogger(__name__)


def missing_files(data_dir: str | Path, expected_files: Iterable[str]) -> list[str]:
    """Expected paths (relative to ``data_dir``) that are absent.

    A path ending in ``/`` names a folder that must exist and hold at least one entry.
    """
    root = Path(data_dir)
    missing = []
    for rel in expected_files:
        p = root / rel
        if rel.endswith("/"):
            if not (p.is_dir() and any(p.iterdir())):
                missing.append(rel)
        elif not p.is_file():
            missing.append(rel)
    return missing


def unavailable_message(slug: str, data_dir: str | Path, expected_files: Iterable[str], cause: str) -> str:
    """The user-facing text: what went wrong and the two ways to fix it."""
    data_dir = Path(data_dir).resolve()
    files = "\n".join(f"      {data_dir / f}" for f in expected_files)
    return (
        f"Kaggle data set '{slug}' is not available locally and could not be downloaded ({cause}).\n"
        f"Fix it in one of two ways:\n"
        f"  1. Give the Kaggle API credentials: put kaggle.json (from https://www.kaggle.com/settings, "
        f"'Create New Token') in ~/.kaggle/kaggle.json with `chmod 600`, or set the environment "
        f"variables KAGGLE_USERNAME and KAGGLE_KEY (kaggle>=1.7 also accepts KAGGLE_API_TOKEN or "
        f"~/.kaggle/access_token); then rerun and the archive is downloaded into {data_dir}.\n"
        f"  2. Or download the archive by hand from https://www.kaggle.com/datasets/{slug} and unzip it "
        f"into {data_dir} so that these paths exist:\n{files}\n"
        f"An existing local copy is always used as is, without network access."
    )


def load_kaggle_api(slug: str, data_dir: str | Path, expected_files: Iterable[str]) -> Any:
    """Import ``kaggle`` and return an authenticated API object, or raise DatasetUnavailableError.

    The import and the authentication run with stdout/stderr captured so kaggle's own help text does
    not interleave with the training logs; the relevant part is folded into our message.
    """
    expected_files = list(expected_files)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            import kaggle  # noqa: PLC0415 - imported lazily on purpose (see module docstring)

            api = getattr(kaggle, "api", None)
            if api is None:  # very old/new layouts: build the client ourselves
                from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: PLC0415

                api = KaggleApi()
            api.authenticate()
    except SystemExit as exc:
        raise DatasetUnavailableError(
            unavailable_message(slug, data_dir, expected_files, f"the kaggle client exited with status {exc.code}: "
                                "no credentials were found")
        ) from None
    except ImportError as exc:
        raise DatasetUnavailableError(
            unavailable_message(
                slug,
                data_dir,
                expected_files,
                f"the kaggle package cannot be imported: {exc}; `pip install kaggle six` fixes a missing package",
            )
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetUnavailableError(
            unavailable_message(slug, data_dir, expected_files, f"kaggle authentication failed: {exc}")
        ) from exc
    return api


def download_kaggle_dataset(
    slug: str, data_dir: str | Path, expected_files: Iterable[str], api: Any | None = None
) -> None:
    """Download and unzip Kaggle data set ``slug`` into ``data_dir``, then check the expected files.

    ``api`` lets tests pass a fake with the same ``dataset_download_files(slug, path=, unzip=)``
    method as ``kaggle.api``; by default the real client is loaded lazily.
    """
    expected_files = list(expected_files)
    data_dir = Path(data_dir)
    if api is None:
        api = load_kaggle_api(slug, data_dir, expected_files)
    make_dirs(data_dir)  # removed again by the command wrapper if the download fails and leaves it empty
    log.info("Downloading Kaggle data set %s into %s", slug, data_dir)
    try:
        api.dataset_download_files(slug, path=str(data_dir), unzip=True)
    except SystemExit as exc:
        raise DatasetUnavailableError(
            unavailable_message(slug, data_dir, expected_files, f"the kaggle client exited with status {exc.code}")
        ) from None
    except Exception as exc:  # network errors, 403 for unaccepted rules, ...: all need the same fixes
        raise DatasetUnavailableError(
            unavailable_message(slug, data_dir, expected_files, f"download failed: {type(exc).__name__}: {exc}")
        ) from exc
    still_missing = missing_files(data_dir, expected_files)
    if still_missing:
        raise DatasetUnavailableError(
            unavailable_message(
                slug,
                data_dir,
                expected_files,
                f"the download finished but {still_missing} are missing; the archive layout may have changed",
            )
        )
