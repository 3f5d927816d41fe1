"""Kaggle-backed collections preprocessed once and cached (nasdaq, nasa, usdroughts), following the
preprocessing of the frequency-diffusion reference (see :mod:`tsdiff.data.datamodules`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import check_columns, check_no_nans
from tsdiff.data.errors import DataFormatError

log = logging.getLogger(__name__)


# ====================================================================== shared: cached preprocessing
class _CachedCollectionDataModule(TimeSeriesDataModule):
    """A collection whose preprocessing reads many/large files; the result is cached in data_dir.

    The cache (``data_dir/tsdiff_cache_<key>.npz``) holds only the deterministic, seed-independent
    preprocessing output (sequences before splitting/standardization), so changing ``seed`` or the
    fractions never reuses stale splits. Pass ``cache=False`` to always recompute.
    """

    layout = "collection"

    def cache_key(self) -> str:
        return self.dataset_name

    def preprocess(self) -> tuple[np.ndarray, list[str]]:
        raise NotImplementedError

    def load_collection(self) -> tuple[np.ndarray, None]:
        path = self.data_dir / f"tsdiff_cache_{self.cache_key()}.npz"
        if self.cache and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                x, names = z["x"], [str(n) for n in z["channels"]]
        else:
            x, names = self.preprocess()
            if self.cache:
                np.savez(path, x=x, channels=np.array(names))
        self.channel_names = names
        return x, None


# ====================================================================== NASDAQ
class NASDAQDataModule(_CachedCollectionDataModule):
    """``datamodule=nasdaq``: one trading year of NASDAQ-listed stocks, Kaggle ``jacksoncrow/stock-market-dataset``.

    Files: ``data_dir/stocks/<TICKER>.csv`` with columns ``Date,Open,High,Low,Close,Adj Close,Volume``
    (the archive also has ``etfs/`` and ``symbols_valid_meta.csv``, unused). As in fdiff's
    ``nasdaq_preprocess``: keep stocks listed on or before 2019-01-01 and still listed on or after
    2020-01-01, restrict to [2019-01-01, 2020-01-01), keep stocks with exactly 252 trading days there,
    and make each stock one sequence of 252 days. Channels are fdiff's (its pivot table sorts the
    price columns alphabetically and drops the last one, Volume): Adj Close, Close, High, Low, Open.
    Stocks are split at random with ``seed``, 10 % test as fdiff's ``train_frac=0.9``.

    This is a collection of independent sequences, not one long series: that is how the reference
    defines the data set, so splits are by stock. tsdiff additionally drops stocks with a NaN price
    inside the year (fdiff would propagate the NaN into training) and logs how many.
    """

    dataset_name = "nasdaq"
    default_seq_len = 252
    start_date = "2019-01-01"
    end_date = "2020-01-01"
    n_days = 252
    raw_columns = ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")
    channels = ("Adj Close", "Close", "High", "Low", "Open")

    def __init__(
        self,
        data_dir: str = "data/nasdaq",
        cache: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.cache = bool(cache)

    def preprocess(self) -> tuple[np.ndarray, list[str]]:
        start, end = pd.Timestamp(self.start_date), pd.Timestamp(self.end_date)
        paths = sorted((self.data_dir / "stocks").glob("*.csv"))
        kept, n_nan = [], 0
        for path in paths:
            try:
                df = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                continue  # a few tickers in the archive are empty files
            check_columns(list(map(str, df.columns)), list(self.raw_columns), str(path))
            if df.empty:
                continue
            dates = pd.to_datetime(df["Date"], errors="coerce")
            if dates.isna().any():
                raise DataFormatError(f"{path}: {int(dates.isna().sum())} unparsable value(s) in column Date; "
                                      f"dates must look like 2019-01-02. Download the data set again.")
            if not (dates.min() <= start and dates.max() >= end):
                continue
            in_year = (dates >= start) & (dates < end)
            year = df.loc[in_year].assign(Date=dates[in_year]).sort_values("Date")
            if year["Date"].nunique() != self.n_days:
                continue
            year = year.groupby("Date", sort=True)[list(self.channels)].mean()
            if year.isna().any().any():
                n_nan += 1
                continue
            kept.append(year.to_numpy(dtype=np.float64))
        if n_nan:
            log.warning("nasdaq: dropped %d stock(s) with NaN prices in %s..%s", n_nan, self.start_date, self.end_date)
        if not kept:
            raise DataFormatError(
                f"{self.data_dir / 'stocks'}: none of the {len(paths)} stock files covers {self.start_date} to "
                f"{self.end_date} with exactly {self.n_days} trading days. Unzip the full Kaggle archive "
                f"jacksoncrow/stock-market-dataset into {self.data_dir.resolve()}."
            )
        return np.stack(kept), list(self.channels)


# ====================================================================== NASA
class NASADataModule(_CachedCollectionDataModule):
    """``datamodule=nasa``: NASA Li-ion battery cycles, Kaggle ``patrickfleith/nasa-battery-dataset``.

    Files: ``data_dir/cleaned_dataset/metadata.csv`` (columns include ``type`` and ``filename``) and
    ``data_dir/cleaned_dataset/data/<filename>`` (one cycle per CSV with a ``Time`` column in
    seconds). As in fdiff's ``nasa_preprocess``, for ``subdataset``:

    - ``charge``: features Voltage_measured, Current_measured, Temperature_measured, Current_charge,
      Voltage_charge; bins of 10 s up to a cutoff of 5000 s (501 bins);
    - ``discharge``: Voltage_measured, Current_measured, Temperature_measured, Current_load,
      Voltage_load; bins of 15 s up to 1995 s (134 bins);

    keep cycles that last longer than the cutoff and whose largest sampling gap is at most one bin,
    drop samples at or after the cutoff, and average each feature in the bins (-w, 0], (0, w], ...
    With ``remove_outlier_feature`` (default, as in fdiff) the charge data keeps every second bin and
    drops Temperature_measured: 251 steps x 4 channels; discharge is 134 steps x 5 channels.
    Cycles are split at random with ``seed`` (10 % test, fdiff's ``train_frac=0.9``). A cycle with an
    empty bin or NaN feature in a bin is skipped with a warning (fdiff would keep the NaN).
    """

    dataset_name = "nasa"
    settings = {
        "charge": (("Voltage_measured", "Current_measured", "Temperature_measured", "Current_charge",
                    "Voltage_charge"), 10, 5000),
        "discharge": (("Voltage_measured", "Current_measured", "Temperature_measured", "Current_load",
                       "Voltage_load"), 15, 2000),
    }

    def __init__(
        self,
        data_dir: str = "data/nasa",
        subdataset: str = "charge",
        remove_outlier_feature: bool = True,
        cache: bool = True,
        **kwargs: Any,
    ) -> None:
        if subdataset not in self.settings:
            raise ValueError(f"subdataset={subdataset!r} is not valid; use datamodule.subdataset=charge or discharge")
        self.subdataset = subdataset
        self.remove_outlier_feature = bool(remove_outlier_feature)
        features, width, cutoff = self.settings[subdataset]
        self.bin_width = width
        self.cutoff = cutoff - cutoff % width
        n_bins = self.cutoff // width + 1
        if self.remove_outlier_feature and subdataset == "charge":
            n_bins = math.ceil(n_bins / 2)
        self.native_len = n_bins
        kwargs.setdefault("batch_size", 16)
        if kwargs.get("seq_len") is None:
            kwargs["seq_len"] = n_bins
        super().__init__(data_dir=data_dir, **kwargs)
        self.cache = bool(cache)

    def cache_key(self) -> str:
        return f"nasa_{self.subdataset}_{int(self.remove_outlier_feature)}"

    def _bin_cycle(self, data: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray | None:
        t = data["Time"].to_numpy(dtype=np.float64)
        if not t.size or t.max() <= self.cutoff or np.nanmax(np.diff(t), initial=0.0) > self.bin_width:
            return None
        keep = (t < self.cutoff) & (t > -self.bin_width)
        t = t[keep]
        values = data.loc[keep, list(features)].to_numpy(dtype=np.float64)
        n_bins = self.cutoff // self.bin_width + 1
        idx = np.ceil(t / self.bin_width).astype(np.int64)  # (k-1)w < t <= kw  ->  bin k
        finite = np.isfinite(values)
        sums = np.zeros((n_bins, len(features)))
        counts = np.zeros((n_bins, len(features)))
        np.add.at(sums, idx, np.where(finite, values, 0.0))
        np.add.at(counts, idx, finite)
        if (counts == 0).any():
            return None
        return sums / counts

    def preprocess(self) -> tuple[np.ndarray, list[str]]:
        features, _, _ = self.settings[self.subdataset]
        root = self.data_dir / "cleaned_dataset"
        meta_path = root / "metadata.csv"
        meta = pd.read_csv(meta_path)
        missing_cols = [c for c in ("type", "filename") if c not in meta.columns]
        if missing_cols:
            raise DataFormatError(f"{meta_path}: missing columns {missing_cols} (found {list(meta.columns)}). "
                                  f"Use the original cleaned_dataset/metadata.csv of the Kaggle archive.")
        files = sorted(meta.loc[meta["type"] == self.subdataset, "filename"].astype(str))
        cycles, skipped_nan = [], 0
        for name in files:
            path = root / "data" / name
            if not path.is_file():
                raise DataFormatError(f"{path} is listed in {meta_path} but missing. Unzip the whole Kaggle archive "
                                      f"patrickfleith/nasa-battery-dataset into {self.data_dir.resolve()}.")
            data = pd.read_csv(path)
            missing = [c for c in (*features, "Time") if c not in data.columns]
            if missing:
                raise DataFormatError(f"{path}: missing columns {missing} (found {list(data.columns)}) for a "
                                      f"{self.subdataset} cycle. Use the original cleaned_dataset files.")
            binned = self._bin_cycle(data, features)
            if binned is None:
                if data["Time"].max() > self.cutoff:
                    skipped_nan += 1
                continue
            cycles.append(binned)
        if skipped_nan:
            log.warning("nasa: skipped %d %s cycle(s) with an empty bin or NaN values", skipped_nan, self.subdataset)
        if not cycles:
            raise DataFormatError(
                f"{root}: no {self.subdataset} cycle lasts longer than {self.cutoff} s with sampling gaps "
                f"<= {self.bin_width} s. Unzip the full Kaggle archive into {self.data_dir.resolve()}."
            )
        x = np.stack(cycles)
        names = list(features)
        if self.remove_outlier_feature and self.subdataset == "charge":
            x = x[:, ::2][:, :, [0, 1, 3, 4]]
            names = [names[i] for i in (0, 1, 3, 4)]
        return x, names


# ====================================================================== US droughts
class USDroughtsDataModule(_CachedCollectionDataModule):
    """``datamodule=usdroughts``: daily weather of US counties, Kaggle ``cdminix/us-drought-meteorological-data``.

    File: ``data_dir/train_timeseries/train_timeseries.csv`` with columns ``fips, date``, 18
    meteorological variables and the weekly drought ``score`` (NaN on most days). As in fdiff's
    ``droughts_preprocess``: keep the year [2011-01-01, 2012-01-01) (365 days), drop columns with
    missing values (this removes ``score``), one sequence per county (fips) of 365 days, and drop the
    variables fdiff removes (its indices 4, 5, 6, 7, 9 of the alphabetically sorted variables:
    T2MDEW, T2MWET, T2M_MAX, T2M_MIN, TS), leaving 13 channels. Counties are split at random with
    ``seed`` (10 % test, as fdiff's ``train_frac=0.9``). A county without all 365 days is dropped
    with a warning (fdiff would fail on it). The file is ~2 GB and read in chunks.
    """

    dataset_name = "usdroughts"
    default_seq_len = 365
    start_date = "2011-01-01"
    end_date = "2012-01-01"
    variables = (
        "PRECTOT", "PS", "QV2M", "T2M", "T2MDEW", "T2MWET", "T2M_MAX", "T2M_MIN", "T2M_RANGE", "TS",
        "WS10M", "WS10M_MAX", "WS10M_MIN", "WS10M_RANGE", "WS50M", "WS50M_MAX", "WS50M_MIN", "WS50M_RANGE",
    )
    dropped = ("T2MDEW", "T2MWET", "T2M_MAX", "T2M_MIN", "TS")

    def __init__(
        self,
        data_dir: str = "data/usdroughts",
        cache: bool = True,
        chunksize: int = 1_000_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.cache = bool(cache)
        self.chunksize = int(chunksize)

    @property
    def channels(self) -> list[str]:
        return [v for v in self.variables if v not in self.dropped]

    def preprocess(self) -> tuple[np.ndarray, list[str]]:
        path = self.data_dir / "train_timeseries" / "train_timeseries.csv"
        header = list(pd.read_csv(path, nrows=0).columns)
        expected = ["fips", "date", *self.variables, "score"]
        check_columns(header, expected, str(path))
        start, end = pd.Timestamp(self.start_date), pd.Timestamp(self.end_date)
        channels = self.channels
        parts = []
        for chunk in pd.read_csv(path, usecols=["fips", "date", *channels], chunksize=self.chunksize):
            dates = pd.to_datetime(chunk["date"], errors="coerce")
            if dates.isna().any():
                raise DataFormatError(f"{path}: unparsable value(s) in column date; expected e.g. 2011-01-01. "
                                      f"Download the data set again.")
            sel = (dates >= start) & (dates < end)
            if sel.any():
                parts.append(chunk.loc[sel].assign(date=dates[sel]))
        n_days = (end - start).days
        if not parts:
            raise DataFormatError(f"{path}: no rows in {self.start_date}..{self.end_date}; unzip the original "
                                  f"Kaggle archive into {self.data_dir.resolve()}.")
        df = pd.concat(parts, ignore_index=True)
        check_no_nans(df[channels], f"{path} ({self.start_date}..{self.end_date})")
        df = df.sort_values(["fips", "date"])
        counts = df.groupby("fips")["date"].nunique()
        complete = counts.index[counts == n_days]
        if len(complete) < len(counts):
            log.warning("usdroughts: dropped %d county(ies) without all %d days", len(counts) - len(complete), n_days)
        if not len(complete):
            raise DataFormatError(f"{path}: no county (fips) has all {n_days} days of {self.start_date[:4]}.")
        df = df[df["fips"].isin(complete)].drop_duplicates(["fips", "date"])
        x = df[channels].to_numpy(dtype=np.float64).reshape(len(complete), n_days, len(channels))
        return x, channels
