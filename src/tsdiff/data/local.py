"""Your own data for generation: ``datamodule=npy path=...`` and ``datamodule=csv path=...``.

* ``.npy`` (``np.save``, no pickles): ``(N, length, channels)`` is a set of N windows (each one a training
  example, split at random into train/val/test like the collections of fdiff); ``(T, channels)`` or ``(T,)``
  is one long series cut into windows of ``seq_len`` (chronological or seeded-blocks split, like
  ``stocks``; see :mod:`tsdiff.data.base`).
* ``.csv``: one long series, one column per channel, a header row; ``time_column`` names a date/time
  column to leave out, ``columns`` picks the channels (default: every other column).

Everything else -- splits before windowing, scaling fitted on the training split, batches -- is the
common datamodule's. Bad input fails at instantiation with one line naming the problem and the fix:
missing file, wrong suffix or shape, NaN/inf values, non-numeric cells, too short for ``seq_len``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import read_numeric_csv
from tsdiff.data.errors import DataFormatError
from tsdiff.data.specs import DatasetSpec

__all__ = ["NpyDataModule", "CSVSeriesDataModule"]


def _existing(path: str | Path | None, suffix: str, key: str) -> Path:
    if path is None or str(path) in ("", "???"):
        raise ValueError(f"no file given: pass datamodule.path=<your {suffix} file> (e.g. `datamodule={key} datamodule.path=x{suffix}`)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"datamodule.path={path}: no such file (looked in {p.resolve().parent}); give the path of your {suffix} file")
    if p.suffix.lower() != suffix:
        raise DataFormatError(f"datamodule.path={path} is not a {suffix} file; use datamodule={'npy' if p.suffix.lower() == '.npy' else 'csv'} for it")
    return p


def _check_values(arr: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataFormatError(f"{where}: dtype {arr.dtype} is not real numbers; save a float array (np.save(path, x.astype('float32')))")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataFormatError(
            f"{where}: {int(bad.sum())} NaN/inf value(s) (first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); "
            "tsdiff does not impute silently: fill or drop them and save the file again"
        )
    return arr.astype(np.float32)


class _LocalFile(TimeSeriesDataModule):
    """Shared by the two: a spec of its own (no download, the user's licence) and the name in messages."""

    dataset_name = "local"

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec(name=self.dataset_name, kaggle_slug=None, expected_files=(), licence="the user's own data",
                           attribution="the user's own data", url=str(self.path))


class NpyDataModule(_LocalFile):
    """``datamodule=npy datamodule.path=<file.npy>``: windows ``(N, length, channels)`` or one series ``(T, channels)``/``(T,)``.

    ``seq_len`` null = the windows' own length (a set of windows) or 24 (a series); windows longer than
    ``seq_len`` are cut into ``seq_len``-long pieces (``stride``)."""

    def __init__(self, path: str | None = None, **kwargs: Any) -> None:
        self.path = _existing(path, ".npy", "npy")
        where = f"datamodule=npy ({self.path})"
        try:
            arr = np.load(self.path, allow_pickle=False, mmap_mode="r")
        except ValueError as err:
            raise DataFormatError(f"{where}: not a plain numeric .npy file ({err}); save it with np.save(path, array)") from None
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim not in (2, 3) or min(arr.shape) < 1:
            raise DataFormatError(
                f"{where}: shape {arr.shape} is not (N, length, channels) windows nor a (T, channels) or (T,) series; "
                "reshape it before saving (e.g. x[..., None] for one channel)"
            )
        self.layout = "collection" if arr.ndim == 3 else "series"
        self.dataset_name = self.path.stem
        if kwargs.get("seq_len") is None and arr.ndim == 3:
            kwargs["seq_len"] = int(arr.shape[1])
        super().__init__(data_dir=str(self.path.parent), **kwargs)
        self._data = _check_values(np.asarray(arr), where)
        if arr.ndim == 2 and self.split == "chronological" and len(arr) < self.seq_len:
            raise DataFormatError(f"{where}: the series has {len(arr)} steps, fewer than seq_len={self.seq_len}; lower datamodule.seq_len")
        self.channel_names = [f"ch{i}" for i in range(self._data.shape[-1])]

    def load_series(self) -> np.ndarray:
        return self._data

    def load_collection(self) -> tuple[np.ndarray, None]:
        return self._data, None


class CSVSeriesDataModule(_LocalFile):
    """``datamodule=csv datamodule.path=<file.csv>``: one long series, one column per channel, cut into windows."""

    layout = "series"

    def __init__(self, path: str | None = None, time_column: str | None = None, columns: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        self.path = _existing(path, ".csv", "csv")
        where = f"datamodule=csv ({self.path})"
        import pandas as pd

        try:
            header = [str(c) for c in pd.read_csv(self.path, nrows=0).columns]
        except pd.errors.EmptyDataError:
            raise DataFormatError(f"{where}: the file is empty; it needs a header row and one column per channel") from None
        wanted = [str(c) for c in columns] if columns else [c for c in header if c != time_column]
        missing = [c for c in [*wanted, *([time_column] if time_column else [])] if c not in header]
        if missing:
            raise DataFormatError(f"{where}: column(s) {missing} not in the header {header}; fix datamodule.columns / datamodule.time_column")
        if not wanted:
            raise DataFormatError(f"{where}: no channel column left (header {header}); name them with datamodule.columns=[...]")
        self.dataset_name = self.path.stem
        super().__init__(data_dir=str(self.path.parent), **kwargs)
        hint = " (a date column? name it with datamodule.time_column=<name>)"
        try:
            df = read_numeric_csv(self.path, where, usecols=wanted)
        except DataFormatError as err:
            raise DataFormatError(f"{err}{hint if 'non-numeric' in str(err) else ''}") from None
        self._data = _check_values(df[wanted].to_numpy(), where)
        if len(self._data) < self.seq_len:
            raise DataFormatError(f"{where}: {len(self._data)} rows, fewer than seq_len={self.seq_len}; lower datamodule.seq_len")
        self.channel_names = wanted

    def load_series(self) -> np.ndarray:
        return self._data
