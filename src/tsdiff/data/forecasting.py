"""Forecasting data: (lookback, future) windows of one long series, split chronologically.

:class:`ForecastingDataModule` serves the long-term-forecasting protocol used by TimeDiff (Shen & Kwok,
ICML 2023, Sec. 4.1), which follows Informer/Autoformer/FEDformer:

* **Chronological splits** train : val : test, 6:2:2 for ETT and 7:1:2 otherwise (``split``). As in
  those code bases, the val (test) segment starts ``lookback`` steps before its first target, so the
  first val (test) window may look back into the previous split; *targets* never overlap splits.
* **Standardization fitted on the train segment only**, per variable (:class:`tsdiff.data.base.Scaler`);
  the paper reports MSE in this standardized space, so every model here trains and is scored in it.
* **Univariate** = the last variable only (``univariate=true``); **multivariate** = all variables.

Batches are dicts ``{"lookback": FloatTensor(B, L, C), "future": FloatTensor(B, H, C)}`` (tsdiff's
``(batch, length, channels)`` layout). Windows are cut lazily from the standardized series, so
stride-1 windows of a long series cost no extra memory.

Sources (``source=``):

* ``energy`` / ``stocks``: the series bundled with tsdiff (checksummed, offline); no date column.
* ``csv``: a CSV in the standard long-term-forecasting layout - a date column first, then one numeric
  column per variable (ETTh1, ETTm1, Exchange, Weather, Electricity, Traffic, Wind, ...) - read from
  ``data_dir/filename``. When the file is missing and ``kaggle_slug`` names a Kaggle data set that
  contains it, :meth:`prepare_data` downloads it (lazy ``kaggle`` import, see :mod:`tsdiff.data.kaggle`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tsdiff.data.base import Scaler
from tsdiff.data.csvio import bundled_bytes, check_no_nans, read_numeric_csv
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.kaggle import download_kaggle_dataset
from tsdiff.data.specs import get_spec

__all__ = ["ForecastingDataModule", "ForecastWindows", "read_forecasting_csv", "split_borders"]

log = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
#: bundled series: name -> file in tsdiff/data/bundled (checksums from tsdiff.data.specs)
_BUNDLED = {
    "energy": "energy_data.csv",
    "stocks": "stock_data.csv",
}


def read_forecasting_csv(source, where: str) -> tuple[np.ndarray, list[str]]:
    """Read the long-term-forecasting CSV layout: a date column first, then numeric variables.

    Returns ``(values (T, C) float64, variable names)``. Raises :class:`DataFormatError` naming the
    problem and the fix when the layout is wrong (no date column, fewer than one variable, text cells,
    NaNs, dates out of order).
    """
    try:
        raw = pd.read_csv(source)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DataFormatError(f"{where}: not a readable CSV ({exc}). Download the data set again.") from None
    if raw.shape[1] < 2:
        raise DataFormatError(
            f"{where}: found {raw.shape[1]} column(s) {list(raw.columns)}; the forecasting layout needs a "
            f"date column first and at least one variable after it (e.g. 'date,HUFL,...,OT' as in ETTh1.csv)."
        )
    date_col = str(raw.columns[0])
    dates = pd.to_datetime(raw.iloc[:, 0], errors="coerce", format="mixed")
    if dates.isna().any() or pd.api.types.is_numeric_dtype(raw.iloc[:, 0]):
        bad = raw.iloc[:, 0][dates.isna()].head(3).tolist() if dates.isna().any() else raw.iloc[:3, 0].tolist()
        raise DataFormatError(
            f"{where}: the first column '{date_col}' must hold timestamps (the long-term-forecasting layout "
            f"is 'date,<var1>,<var2>,...'), but it holds values such as {bad}. Fix: put the timestamp "
            f"column first (add one, e.g. a running date range, if the file has none)."
        )
    if not dates.is_monotonic_increasing:
        raise DataFormatError(
            f"{where}: the dates in '{date_col}' are not in increasing order; the chronological split needs "
            f"sorted rows. Fix: sort the file by '{date_col}' (pandas: df.sort_values('{date_col}'))."
        )
    body = raw.iloc[:, 1:].copy()
    non_numeric = [str(c) for c in body.columns if not pd.api.types.is_numeric_dtype(body[c])]
    if non_numeric:
        coerced = body[non_numeric].apply(pd.to_numeric, errors="coerce")
        n_bad = int((coerced.isna() & body[non_numeric].notna()).sum().sum())
        if n_bad:
            raise DataFormatError(
                f"{where}: {n_bad} non-numeric cell(s) in variable column(s) {non_numeric}. After the date column "
                f"every cell must be a number; remove text cells or extra header rows."
            )
        body[non_numeric] = coerced
    check_no_nans(body, where)
    return body.to_numpy(dtype=np.float64), [str(c) for c in body.columns]


def split_borders(length: int, lookback: int, horizon: int, split: Sequence[float]) -> dict[str, tuple[int, int]]:
    """``[start, stop)`` rows of each split's segment, LTSF style.

    ``n_train = floor(T r_train)``, ``n_test = floor(T r_test)``, ``n_val`` the rest. The val and test
    segments start ``lookback`` rows before their first target. Raises a :class:`DataFormatError` when
    the series (or a split) cannot hold one window of ``lookback + horizon`` steps.
    """
    need = lookback + horizon
    if length < need:
        raise DataFormatError(
            f"the series has {length} time steps, shorter than lookback + horizon = {lookback} + {horizon} "
            f"= {need}. Fix: lower datamodule.lookback / datamodule.horizon or use a longer series."
        )
    r_train, r_val, r_test = (float(r) for r in split)
    n_train = int(length * r_train)
    n_test = int(length * r_test)
    n_val = length - n_train - n_test
    borders = {
        "train": (0, n_train),
        "val": (n_train - lookback, n_train + n_val),
        "test": (length - n_test - lookback, length),
    }
    targets = {"train": n_train - lookback, "val": n_val, "test": n_test}
    for name, n_targets in targets.items():
        if n_targets < horizon or borders[name][0] < 0:
            raise DataFormatError(
                f"the {name} split of this {length}-step series has too few steps for one window of "
                f"lookback {lookback} + horizon {horizon} (split ratios {tuple(split)}). Fix: lower "
                f"datamodule.lookback / datamodule.horizon, or give the {name} split a larger share."
            )
    return borders


class ForecastWindows(Dataset):
    """Windows ``{"lookback": series[s:s+L], "future": series[s+L:s+L+H]}`` for the given starts."""

    def __init__(self, series: np.ndarray, lookback: int, horizon: int, starts: np.ndarray):
        self.series = torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32))
        self.lookback, self.horizon = int(lookback), int(horizon)
        self.starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = int(self.starts[index])
        return {
            "lookback": self.series[s : s + self.lookback],
            "future": self.series[s + self.lookback : s + self.lookback + self.horizon],
        }


class ForecastingDataModule(pl.LightningDataModule):
    """Chronologically split (lookback, future) windows; see the module docstring.

    Args:
        source: ``"energy"``, ``"stocks"`` (bundled, offline) or ``"csv"`` (``data_dir/filename``).
        lookback: ``L``, steps the model sees. horizon: ``H``, steps to predict.
        data_dir, filename: where a ``csv`` source lives.
        kaggle_slug: ``owner/dataset`` on Kaggle holding ``filename``; used only when the file is missing.
        name: display name (defaults to ``source`` or the file stem).
        univariate: keep only the last variable (the paper's univariate setting).
        split: ``(train, val, test)`` ratios, e.g. ``[0.6, 0.2, 0.2]`` for ETT, ``[0.7, 0.1, 0.2]`` else.
        train_stride, eval_stride: steps between window starts for training and for val/test loaders.
        batch_size, num_workers: loader settings. seed: order of the shuffled training batches.
        standardize: per-variable z-scoring with train-segment statistics.
        season_length: the data's dominant period in steps (energy: 144 = one day of 10-minute steps;
            stocks: 5 trading days); metadata for seasonal baselines, unused by the windows.
    """

    def __init__(
        self,
        source: str = "energy",
        lookback: int = 96,
        horizon: int = 24,
        data_dir: str = "data",
        filename: str | None = None,
        kaggle_slug: str | None = None,
        name: str | None = None,
        univariate: bool = False,
        split: Sequence[float] = (0.7, 0.1, 0.2),
        train_stride: int = 1,
        eval_stride: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        standardize: bool = True,
        season_length: int = 1,
    ) -> None:
        super().__init__()
        if source not in (*_BUNDLED, "csv"):
            raise ValueError(f"source={source!r} is unknown; use one of {sorted(_BUNDLED)} or 'csv' (with filename=...)")
        for key, value in (("lookback", lookback), ("horizon", horizon), ("train_stride", train_stride),
                           ("season_length", season_length),
                           ("eval_stride", eval_stride), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"datamodule.{key} must be a positive integer, got {value!r}")
        split = tuple(float(r) for r in split)
        if len(split) != 3 or any(r <= 0 for r in split) or abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(
                f"datamodule.split={list(split)} must be three positive ratios (train, val, test) summing to 1, "
                f"e.g. [0.7, 0.1, 0.2] (or [0.6, 0.2, 0.2] for ETT)"
            )
        if source == "csv" and not filename:
            raise ValueError("source=csv needs datamodule.filename=<file.csv> (looked up in datamodule.data_dir)")
        self.source = source
        self.lookback, self.horizon = int(lookback), int(horizon)
        self.data_dir = Path(data_dir)
        self.filename = filename
        self.kaggle_slug = kaggle_slug
        self.name = name or (Path(filename).stem if source == "csv" else source)
        self.univariate = bool(univariate)
        self.split = split
        self.train_stride, self.eval_stride = int(train_stride), int(eval_stride)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        if self.num_workers < 0:
            raise ValueError(f"datamodule.num_workers must be >= 0, got {num_workers}")
        self.seed = int(seed)
        self.standardize = bool(standardize)
        self.season_length = int(season_length)
        self._series: np.ndarray | None = None
        self._borders: dict[str, tuple[int, int]] | None = None
        self._scaler: Scaler | None = None
        self.channel_names: list[str] = []

    # ------------------------------------------------------------------ reading
    @property
    def csv_path(self) -> Path:
        return self.data_dir / str(self.filename)

    def prepare_data(self) -> None:
        """Download ``filename`` from Kaggle only when it is missing and a slug is configured."""
        if self.source != "csv" or self.csv_path.is_file():
            return
        if not self.kaggle_slug:
            raise DatasetUnavailableError(
                f"{self.csv_path} does not exist. Put the CSV (date column first, then the variables) there, "
                f"point datamodule.data_dir / datamodule.filename at it, or set datamodule.kaggle_slug=<owner/dataset> "
                f"of a Kaggle data set containing {self.filename} to download it."
            )
        download_kaggle_dataset(self.kaggle_slug, self.data_dir, [str(self.filename)])

    def load_raw(self) -> tuple[np.ndarray, list[str]]:
        """Raw ``(T, C)`` values and variable names, chronological, before any scaling."""
        if self.source in _BUNDLED:
            fname = _BUNDLED[self.source]
            data = bundled_bytes(fname, get_spec(self.source).bundled_files[fname])
            df = read_numeric_csv(io.BytesIO(data), f"bundled {fname}")
            return df.to_numpy(dtype=np.float64), [str(c) for c in df.columns]
        if not self.csv_path.is_file():
            self.prepare_data()
        return read_forecasting_csv(self.csv_path, str(self.csv_path))

    def setup(self, stage: str | None = None) -> None:
        if self._series is not None:
            return
        values, names = self.load_raw()
        if self.univariate:
            values, names = values[:, -1:], names[-1:]
        borders = split_borders(len(values), self.lookback, self.horizon, self.split)
        train_raw = values[: borders["train"][1]]
        self._scaler = Scaler.fit(train_raw) if self.standardize else Scaler.identity(values.shape[1])
        self._series = np.asarray(self._scaler.transform(values.astype(np.float32)), dtype=np.float32)
        self._borders = borders
        self.channel_names = names
        log.info("%s: %d steps x %d variables; windows %s", self.name, len(values), values.shape[1],
                 {s: self.num_windows(s) for s in _SPLITS})

    # ------------------------------------------------------------------ windows
    def _require_setup(self) -> None:
        if self._series is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before reading windows")

    def window_starts(self, split: str, stride: int = 1) -> np.ndarray:
        """Start rows of every window of ``split`` with the given stride."""
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} must be one of {_SPLITS}")
        self._require_setup()
        lo, hi = self._borders[split]
        last = hi - self.lookback - self.horizon
        return np.arange(lo, last + 1, int(stride), dtype=np.int64)

    def num_windows(self, split: str, stride: int = 1) -> int:
        return len(self.window_starts(split, stride))

    def dataset(self, split: str, stride: int | None = None) -> ForecastWindows:
        if stride is None:
            stride = self.train_stride if split == "train" else self.eval_stride
        return ForecastWindows(self._series, self.lookback, self.horizon, self.window_starts(split, stride))

    def arrays(self, split: str, stride: int | None = None, max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stacked ``(lookback (N, L, C), future (N, H, C))`` of ``split``.

        ``stride`` defaults to ``horizon`` (non-overlapping targets); with ``max_windows`` an evenly
        spaced, deterministic subset covering the whole split is kept.
        """
        self._require_setup()
        starts = self.window_starts(split, self.horizon if stride is None else stride)
        if max_windows is not None and 0 < int(max_windows) < len(starts):
            starts = starts[np.unique(np.linspace(0, len(starts) - 1, int(max_windows)).round().astype(np.int64))]
        idx = starts[:, None] + np.arange(self.lookback + self.horizon)[None, :]
        windows = self._series[idx]  # (N, L + H, C)
        return np.ascontiguousarray(windows[:, : self.lookback]), np.ascontiguousarray(windows[:, self.lookback :])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self._require_setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=generator,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------------ facts for the model
    @property
    def n_channels(self) -> int:
        self._require_setup()
        return int(self._series.shape[1])

    @property
    def scaler(self) -> Scaler:
        self._require_setup()
        return self._scaler

    def model_kwargs(self) -> dict[str, int]:
        """Data facts the train task passes to ``instantiate(cfg.model, **kwargs)``."""
        if self._series is None:
            self.prepare_data()
            self.setup("fit")
        return {"lookback": self.lookback, "horizon": self.horizon, "n_channels": self.n_channels}
