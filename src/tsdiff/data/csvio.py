"""Reading and validating numeric files, with errors that name the problem and the fix.

Every file-backed datamodule (bundled or local) goes through these helpers, so a NaN, a wrong
column count, a non-numeric cell, an altered bundled file or a series shorter than the requested
window all surface as :class:`~tsdiff.data.errors.DataFormatError` before any training starts.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import IO, Sequence

import numpy as np
import pandas as pd

from tsdiff.data.errors import DataFormatError

__all__ = [
    "read_numeric_csv",
    "check_no_nans",
    "check_columns",
    "check_length",
    "bundled_bytes",
    "sha256_bytes",
]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundled_bytes(filename: str, expected_sha256: str | None = None) -> bytes:
    """Bytes of a CSV shipped in ``tsdiff/data/bundled``, checked against its sha256.

    The expected checksum comes from :mod:`tsdiff.data.specs` and must also match
    ``bundled/checksums.json``; a mismatch means the installed file was altered or truncated.
    """
    folder = resources.files("tsdiff.data").joinpath("bundled")
    try:
        data = folder.joinpath(filename).read_bytes()
    except FileNotFoundError:
        raise DataFormatError(
            f"bundled file {filename!r} is missing from the installed tsdiff package ({folder}); "
            f"reinstall tsdiff (`pip install --force-reinstall tsdiff`)"
        ) from None
    listed = json.loads(folder.joinpath("checksums.json").read_text())
    want = {expected_sha256, listed.get(filename)} - {None}
    got = sha256_bytes(data)
    if len(want) != 1 or got not in want:
        raise DataFormatError(
            f"bundled file {filename!r} fails its checksum: sha256 {got}, expected {sorted(want)}. "
            f"The file was altered or truncated; reinstall tsdiff (`pip install --force-reinstall tsdiff`)."
        )
    return data


def check_columns(found: Sequence[str] | int, expected: Sequence[str] | int, where: str) -> None:
    """Compare a file's columns (names or count) with the expected ones."""
    n_found = found if isinstance(found, int) else len(found)
    n_expected = expected if isinstance(expected, int) else len(expected)
    if n_found != n_expected:
        detail = ""
        if not isinstance(found, int) and not isinstance(expected, int):
            detail = f" (expected {list(expected)}, found {list(found)})"
        raise DataFormatError(
            f"{where}: wrong number of columns: expected {n_expected}, found {n_found}{detail}. "
            f"Use the original file of this data set, unmodified."
        )
    if not isinstance(found, int) and not isinstance(expected, int):
        missing = [c for c in expected if c not in set(found)]
        if missing:
            raise DataFormatError(
                f"{where}: missing columns {missing} (found {list(found)}). Use the original file of this data set."
            )


def check_no_nans(df: pd.DataFrame, where: str) -> None:
    """Raise if any cell is NaN, naming how many and in which columns."""
    counts = df.isna().sum()
    bad = counts[counts > 0]
    if len(bad):
        per_col = ", ".join(f"{col!s}: {int(n)}" for col, n in bad.items())
        raise DataFormatError(
            f"{where}: {int(bad.sum())} missing/NaN value(s) (per column: {per_col}). "
            f"tsdiff does not impute silently: fill or drop those rows (e.g. pandas "
            f"`df.ffill()` or `df.dropna()`) and save the file again."
        )


def check_length(length: int, seq_len: int, where: str, hint: str = "") -> None:
    """Raise if a series of ``length`` steps cannot hold one window of ``seq_len``."""
    if length < seq_len:
        raise DataFormatError(
            f"{where}: series has {length} time steps, too short for the requested seq_len={seq_len}. "
            f"Fix: use datamodule.seq_len<={length}{hint}."
        )


def read_numeric_csv(
    source: str | Path | IO[bytes] | IO[str],
    where: str,
    expected_columns: Sequence[str] | int | None = None,
    header: bool = True,
    usecols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV whose cells must all be numbers; validate columns and NaNs.

    ``where`` is the human-readable name of the file used in error messages; ``usecols`` reads only
    those columns (the others, e.g. a date column, are not checked).
    """
    try:
        df = pd.read_csv(source, header=0 if header else None, usecols=list(usecols) if usecols is not None else None)
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{where}: the file is empty. Download the data set again.") from None
    except pd.errors.ParserError as exc:
        raise DataFormatError(f"{where}: not a valid CSV ({exc}). Download the data set again.") from None
    if expected_columns is not None:
        found = list(map(str, df.columns)) if header else df.shape[1]
        if not header and not isinstance(expected_columns, int):
            expected_columns = len(expected_columns)
        check_columns(found, expected_columns, where)
    non_numeric = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        # Coercion turns text into NaN; report those cells the same way as NaNs but say why.
        coerced = df[non_numeric].apply(pd.to_numeric, errors="coerce")
        n_bad = int((coerced.isna() & df[non_numeric].notna()).sum().sum())
        if n_bad:
            raise DataFormatError(
                f"{where}: {n_bad} non-numeric cell(s) in column(s) {non_numeric}. "
                f"Every cell must be a number; remove text cells or the extra header rows."
            )
        df[non_numeric] = coerced
    check_no_nans(df, where)
    return df


def as_float32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
