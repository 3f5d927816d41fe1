"""The layout every result JSON of tsdiff follows (schema version 1), and the reader that checks it.

Every command that saves a result wraps its payload in one envelope (:func:`stamp`)::

    {"schema": "tsdiff.result", "schema_version": 1, "kind": "sample",
     "created": "2026-11-30T17:02:11Z", "tsdiff_version": "0.1.0", "run_id": "ab12cd34",
     ...the kind's payload...}

The payload stays at the top level, so a file stays readable by ``json.load`` and ``jq`` without tsdiff.
Kinds and the payload keys a reader may rely on (:data:`REQUIRED`):

* ``sample`` (``cmd/sample.py`` -> ``<run>/samples/<id>/metrics.json``): ``num_samples``,
  ``num_diffusion_steps``, ``sampling`` (sampler stats), ``quality`` (the Diffusion-TS-protocol verdict,
  ``null`` when skipped: ``sets.<set>.<metric>.{mean, ci95, runs}``), ``metrics`` (secondary, per set);
* ``evaluation`` (``cmd/evaluate.py`` -> ``evaluation.json``): ``source``, ``mode``, ``results``
  (``<metric>.{mean, ci95, runs, seconds}``);
* ``benchmark`` / ``ablation`` (``cmd/benchmark_cache.py`` / ``cmd/ablation_cache.py`` ->
  ``<run>/benchmarks/<kind>-<id>/results.json``): ``by_batch`` / ``variants`` row lists;
* ``forecast`` (``cmd/forecast.py`` -> ``forecast.json``): ``dataset``, ``rows`` (one per method).

A metric value with an interval is always ``{"mean", "ci95", "runs"}`` (``mean`` ``null`` = not applicable).

Files written before the schema existed (no ``schema`` key) are read as version 0: their kind is taken from
the file name and content, and they get the same envelope in memory. A file from a newer tsdiff (a higher
``schema_version``) is refused with the fix (upgrade tsdiff), never half-read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "SCHEMA_VERSION", "KINDS", "REQUIRED", "ResultFileError", "Result", "stamp", "read_result"]

SCHEMA = "tsdiff.result"
SCHEMA_VERSION = 1
KINDS = ("sample", "evaluation", "benchmark", "ablation", "forecast")
REQUIRED: dict[str, tuple[str, ...]] = {
    "sample": ("num_samples", "num_diffusion_steps", "sampling", "quality", "metrics"),
    "evaluation": ("source", "mode", "results"),
    "benchmark": ("by_batch",),
    "ablation": ("variants",),
    "forecast": ("dataset", "rows"),
}
_ENVELOPE = ("schema", "schema_version", "kind", "created", "tsdiff_version", "run_id")


class ResultFileError(ValueError):
    """A result file that is not a tsdiff result of a layout this version can read."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tsdiff")
    except Exception:  # not installed (a source checkout on PYTHONPATH)
        return "unknown"


def stamp(kind: str, payload: dict[str, Any], *, run_id: str | None = None) -> dict[str, Any]:
    """``payload`` inside the version-1 envelope (a new dict; ``payload`` is not modified).

    ``created``/``tsdiff_version``/``run_id`` already in the payload are kept."""
    if kind not in KINDS:
        raise ValueError(f"result kind '{kind}' is not one of {', '.join(KINDS)}")
    missing = [k for k in REQUIRED[kind] if k not in payload]
    if missing:
        raise ValueError(f"a '{kind}' result needs {', '.join(missing)} (schema v{SCHEMA_VERSION}, tsdiff.results.schema)")
    head = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": payload.get("created") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tsdiff_version": payload.get("tsdiff_version") or _version(),
        "run_id": payload.get("run_id", run_id),
    }
    return {**head, **{k: v for k, v in payload.items() if k not in head}}


@dataclass(frozen=True)
class Result:
    """One result file, read and checked: its kind, schema version (0 = pre-schema file), run and data."""

    path: Path
    kind: str
    schema_version: int
    run_id: str | None
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def _legacy_kind(path: Path, data: dict[str, Any]) -> str | None:
    if "variants" in data:
        return "ablation"
    if "by_batch" in data:
        return "benchmark"
    if "rows" in data and "dataset" in data:
        return "forecast"
    if "results" in data and "mode" in data:
        return "evaluation"
    if "sampling" in data and "metrics" in data:
        return "sample"
    return {"metrics.json": "sample", "evaluation.json": "evaluation", "forecast.json": "forecast"}.get(path.name)


def read_result(path: str | os.PathLike) -> Result:
    """Read and check one result file (any kind); see the module docstring for the layout."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path} does not exist; pass the path of a result a tsdiff command wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{path} is not valid JSON ({err}); it is not a tsdiff result or it was damaged") from None
    if not isinstance(data, dict):
        raise ResultFileError(f"{path} holds a JSON {type(data).__name__}, not a tsdiff result object")
    if "schema" not in data:  # written before the schema: infer the kind, keep the data as it is
        kind = _legacy_kind(path, data)
        if kind is None:
            raise ResultFileError(f"{path} is not a tsdiff result (no 'schema' key and no known layout)")
        version = 0
    else:
        if data["schema"] != SCHEMA:
            raise ResultFileError(f"{path} declares schema '{data['schema']}', not '{SCHEMA}'")
        version = data.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise ResultFileError(f"{path}: schema_version {version!r} is not a positive integer; the file was edited or damaged")
        if version > SCHEMA_VERSION:
            raise ResultFileError(
                f"{path} uses result schema v{version}, newer than this tsdiff reads (v{SCHEMA_VERSION}); "
                "upgrade tsdiff (pip install -U tsdiff) to read it"
            )
        kind = data.get("kind")
        if kind not in KINDS:
            raise ResultFileError(f"{path}: kind {kind!r} is not one of {', '.join(KINDS)}")
        missing = [k for k in REQUIRED[kind] if k not in data]
        if missing:
            raise ResultFileError(f"{path}: a '{kind}' result lacks {', '.join(missing)}; the file was edited or damaged")
    return Result(path=path, kind=kind, schema_version=version, run_id=data.get("run_id"), data=data)
