"""Unconditional-generation windows in the Diffusion-TS conventions (Yuan & Qiao, ICLR 2024, Sec. 4): sliding
windows of length 24 (64, 128, 256 for the long-window tables), min-max scaled to ``[-1, 1]`` with the training
range (``scaling=minmax`` in the configs), evaluated on ``[0, 1]`` by the metrics protocol.

* :class:`SinesDataModule` (``datamodule=sines``): Diffusion-TS's ``sines``: per window and channel
  ``sin(f t + phi)`` with ``f, phi ~ U(0, 0.1)``, 5 channels, seeded (``numpy.random.default_rng``).
* :class:`CSVWindowsDataModule` (``datamodule=forecast_windows``): any CSV in the long-term-forecasting layout (a date
  column, then one column per variable: ETTh1, Exchange, Electricity, Traffic, Weather, Illness, ...) read with
  :func:`tsdiff.data.forecasting.read_forecasting_csv` from ``data_dir/filename`` (downloaded from Kaggle
  when ``kaggle_slug`` is set and the file is missing), cut into sliding windows like stocks and energy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import check_length
from tsdiff.data.forecasting import read_forecasting_csv
from tsdiff.data.specs import DatasetSpec

__all__ = ["SinesDataModule", "CSVWindowsDataModule", "make_sines"]


def make_sines(n_samples: int, length: int, n_channels: int, seed: int, max_freq: float = 0.1, max_phase: float = 0.1) -> np.ndarray:
    """``(n_samples, length, n_channels)`` float32 windows ``sin(f t + phi)``, ``f ~ U(0, max_freq)`` and
    ``phi ~ U(0, max_phase)`` per window and channel (Diffusion-TS's sine generator), values in ``[-1, 1]``."""
    if min(n_samples, length, n_channels) < 1:
        raise ValueError(f"make_sines: n_samples={n_samples}, length={length}, n_channels={n_channels} must be >= 1")
    if max_freq <= 0 or max_phase < 0:
        raise ValueError(f"make_sines: max_freq must be > 0 and max_phase >= 0, got {max_freq}, {max_phase}")
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.0, max_freq, size=(n_samples, 1, n_channels))
    phase = rng.uniform(0.0, max_phase, size=(n_samples, 1, n_channels))
    t = np.arange(length, dtype=np.float64).reshape(1, length, 1)
    return np.sin(freq * t + phase).astype(np.float32)


class SinesDataModule(TimeSeriesDataModule):
    """``datamodule=sines``: ``n_samples`` independent windows (a collection, one window per sequence)."""

    dataset_name = "sines"
    layout = "collection"
    default_seq_len = 24

    def __init__(self, data_dir: str = "data/sines", n_samples: int = 10000, n_channels: int = 5, max_freq: float = 0.1,
                 max_phase: float = 0.1, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.n_samples, self.n_generated_channels = int(n_samples), int(n_channels)
        self.max_freq, self.max_phase = float(max_freq), float(max_phase)
        make_sines(max(self.n_samples, 1), 1, max(self.n_generated_channels, 1), 0, self.max_freq, self.max_phase)
        if self.n_samples < 3 or self.n_generated_channels < 1:
            raise ValueError(f"sines needs n_samples >= 3 (train/val/test) and n_channels >= 1, got "
                             f"{self.n_samples}, {self.n_generated_channels}")

    def load_collection(self) -> tuple[np.ndarray, None]:
        self.channel_names = [f"sine{i}" for i in range(self.n_generated_channels)]
        return make_sines(self.n_samples, self._seq_len, self.n_generated_channels, self.seed, self.max_freq, self.max_phase), None


class CSVWindowsDataModule(TimeSeriesDataModule):
    """``datamodule=forecast_windows``: one long series from a forecasting-layout CSV, cut into windows.

    Extra args:
        filename: the CSV in ``data_dir`` (e.g. ``ETTh1.csv``).
        name: the data set's name in logs (default: the file stem).
        columns: optional subset of variable columns (default: all).
        kaggle_slug: ``owner/dataset`` to download the file from when it is missing (needs Kaggle credentials).
    """

    layout = "series"
    default_seq_len = 24

    def __init__(self, data_dir: str = "data/forecast", filename: str = "ETTh1.csv", name: str | None = None,
                 columns: list[str] | None = None, kaggle_slug: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("split", "blocks")
        super().__init__(data_dir=data_dir, **kwargs)
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a file name inside data_dir, got {filename!r}")
        self.filename, self.columns, self.kaggle_slug = filename, list(columns) if columns else None, kaggle_slug
        self.dataset_name = name or Path(filename).stem.lower()

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec(name=self.dataset_name, kaggle_slug=self.kaggle_slug, expected_files=(self.filename,),
                           licence="see the data set's publisher", attribution=f"{self.filename} (forecasting CSV layout)",
                           url=f"https://www.kaggle.com/datasets/{self.kaggle_slug}" if self.kaggle_slug else "")

    def acquire(self) -> None:
        if self.kaggle_slug is None:
            raise FileNotFoundError(f"{self.data_dir / self.filename} is missing: put the CSV (a date column, then the "
                                    f"variables) there, or set datamodule.kaggle_slug=<owner/dataset> to download it")
        super().acquire()

    def load_series(self) -> np.ndarray:
        path = self.data_dir / self.filename
        values, names = read_forecasting_csv(path, str(path))
        if self.columns is not None:
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise ValueError(f"{path}: columns {missing} are not in the file; it has {names}")
            values = values[:, [names.index(c) for c in self.columns]]
            names = list(self.columns)
        self.channel_names = names
        check_length(len(values), self._seq_len, str(path))
        return values
