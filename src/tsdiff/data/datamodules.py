"""Concrete datamodules: bundled (stocks, energy), Kaggle-backed (ecg, nasdaq, nasa, usdroughts) and
restricted (mimiciii).

The Kaggle-backed ones reproduce the preprocessing of the reference implementation of Crabbé et al.
2024 ("Time Series Diffusion in the Frequency Domain", arXiv:2402.05933; package ``fdiff``,
``dataloaders/datamodules.py`` and ``utils/preprocessing.py``): the same archive files, column
selections, date ranges, sequence lengths and train/test proportions. Where tsdiff differs, the class
docstring says so and why. Standardization and splitting are in :mod:`tsdiff.data.base`.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import bundled_bytes, check_columns, check_length, check_no_nans, read_numeric_csv
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError

__all__ = [
    "StocksDataModule",
    "EnergyDataModule",
    "ECGDataModule",
    "NASDAQDataModule",
    "NASADataModule",
    "USDroughtsDataModule",
    "MIMICIIIDataModule",
    "smooth_frequency",
]

log = logging.getLogger(__name__)


# ====================================================================== bundled long series
class _BundledSeriesDataModule(TimeSeriesDataModule):
    """One long multivariate series shipped inside the package (see ``bundled/ATTRIBUTION.md``).

    Diffusion-TS setting: windows of 24 steps with stride 1 over all channels. The file is read via
    ``importlib.resources`` and its sha256 is checked against :mod:`tsdiff.data.specs` on every load;
    ``data_dir`` is not read. Rows are kept in file order, which is chronological (TimeGAN's loader
    reverses them; see ATTRIBUTION.md), and the train/val/test cut is chronological.
    """

    layout = "series"
    default_seq_len = 24
    filename: str = ""
    columns: tuple[str, ...] = ()

    def load_series(self) -> np.ndarray:
        spec = self.spec
        data = bundled_bytes(self.filename, spec.bundled_files[self.filename])
        df = read_numeric_csv(io.BytesIO(data), f"bundled {self.filename}", expected_columns=list(self.columns))
        self.channel_names = list(self.columns)
        check_length(len(df), self._seq_len, f"bundled {self.filename}")
        return df.to_numpy(dtype=np.float64)


class StocksDataModule(_BundledSeriesDataModule):
    """``datamodule=stocks``: Google daily prices 2004-2019, 3685 days x 6 channels (TimeGAN data)."""

    dataset_name = "stocks"
    filename = "stock_data.csv"
    columns = ("Open", "High", "Low", "Close", "Adj_Close", "Volume")


class EnergyDataModule(_BundledSeriesDataModule):
    """``datamodule=energy``: UCI appliances energy, 19735 ten-minute steps x 28 channels."""

    dataset_name = "energy"
    filename = "energy_data.csv"
    columns = (
        "Appliances", "lights", "T1", "RH_1", "T2", "RH_2", "T3", "RH_3", "T4", "RH_4", "T5", "RH_5",
        "T6", "RH_6", "T7", "RH_7", "T8", "RH_8", "T9", "RH_9", "T_out", "Press_mm_hg", "RH_out",
        "Windspeed", "Visibility", "Tdewpoint", "rv1", "rv2",
    )


# ====================================================================== ECG
def smooth_frequency(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each series' spectrum, as fdiff's ``utils.fourier.smooth_frequency``.

    ``x`` is (batch, length, channels). As in fdiff, the orthonormal real DFT is packed into
    ``length`` real numbers - real parts of frequencies ``0..floor(L/2)`` followed by imaginary
    parts of ``1..ceil(L/2)-1`` - each packed coefficient is labelled by its frequency index, and the
    packed vector is multiplied by the kernel ``K[t, s] = exp(-(k_t - k_s)^2 / (2 sigma^2))``
    normalised to unit column sums, then transformed back. Because the kernel acts on the packed
    vector, a real part and an imaginary part of nearby frequencies are blended too (a quirk of the
    reference that we keep, so ``smoother_width`` means the same as in the paper). For even lengths
    fdiff's frequency labels do not line up with its packing and it fails; here the labels follow
    the packing for any length (identical to fdiff for odd lengths such as ECG's 187).
    """
    if sigma <= 0:
        raise ValueError(f"smoother_width={sigma} must be > 0 (use 0 in the datamodule to disable smoothing)")
    length = x.shape[1]
    n_re = length // 2 + 1
    n_im = (length - 1) // 2
    spec = np.fft.rfft(np.asarray(x, dtype=np.float64), axis=1, norm="ortho")
    packed = np.concatenate([spec.real, spec.imag[:, 1 : 1 + n_im]], axis=1)
    k = np.concatenate([np.arange(n_re), np.arange(1, 1 + n_im)]).astype(np.float64)
    kernel = np.exp(-0.5 * ((k[:, None] - k[None, :]) / sigma) ** 2)
    kernel /= kernel.sum(axis=0, keepdims=True)
    packed = np.einsum("btc,ts->bsc", packed, kernel)
    imag = np.zeros_like(spec.imag)
    imag[:, 1 : 1 + n_im] = packed[:, n_re:]
    out = np.fft.irfft(packed[:, :n_re] + 1j * imag, n=length, axis=1, norm="ortho")
    return out.astype(np.float32)


class ECGDataModule(TimeSeriesDataModule):
    """``datamodule=ecg``: MIT-BIH heartbeats from Kaggle ``shayanfazeli/heartbeat``.

    Files (as in fdiff): ``mitbih_train.csv`` and ``mitbih_test.csv`` in ``data_dir``; no header,
    188 columns per row = 187 samples of one beat (125 Hz, zero-padded) + the class label. Each beat
    is one sequence of length 187 with 1 channel. The test split is ``mitbih_test.csv`` as in
    fdiff; validation beats are drawn at random (``seed``) from ``mitbih_train.csv``
    (``test_fraction`` is ignored). fdiff reads the header-less files with pandas' default header
    row and so silently drops the first beat of each file; tsdiff keeps it.

    Extra args:
        smoother_width: sigma of the Gaussian frequency-domain smoother applied to every beat before
            standardization (fdiff's ``smooth_frequency`` + ``smoother_width``); 0 disables it.
    """

    dataset_name = "ecg"
    layout = "collection"
    default_seq_len = 187
    n_columns = 188

    def __init__(
        self,
        data_dir: str = "data/ecg",
        smoother_width: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(data_dir=data_dir, **kwargs)
        if smoother_width < 0:
            raise ValueError(f"smoother_width={smoother_width} must be >= 0 (0 disables smoothing)")
        self.smoother_width = float(smoother_width)
        self.labels: dict[str, np.ndarray] = {}

    def _read(self, filename: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.data_dir / filename
        df = read_numeric_csv(path, str(path), expected_columns=self.n_columns, header=False)
        values = df.to_numpy(dtype=np.float64)
        beats = values[:, : self.n_columns - 1, None]
        if self.smoother_width > 0:
            beats = smooth_frequency(beats, self.smoother_width)
        return beats, values[:, -1].astype(np.int64)

    def load_collection(self) -> tuple[np.ndarray, np.ndarray]:
        train, y_train = self._read("mitbih_train.csv")
        test, y_test = self._read("mitbih_test.csv")
        self.labels = {"pool": y_train, "test": y_test}
        self.channel_names = ["ecg"]
        return train, test


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


# ====================================================================== MIMIC-III
def mimic_extract_to_arrays(
    statics: pd.DataFrame, vitals_labs: pd.DataFrame, seed: int, train_frac: float = 0.8, window: int = 24,
    gap: int = 6,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MIMIC-Extract tables -> (train, test) arrays (stays, 24 hours, 104 variables), as fdiff's ``mimic_preprocess``.

    Stays longer than ``window + gap`` hours; their first ``window`` hours; subjects split at random
    (``train_frac``, ``seed``); hourly "mean" variables standardized with train statistics; missing
    values forward-filled within a stay, then filled with the stay mean, then 0 (MIMIC-Extract's
    "simple imputation", mean part only since fdiff keeps only the means). Own implementation.
    """
    idx = pd.IndexSlice
    stays = statics[statics["max_hours"] > window + gap]
    keep_ids = set(stays.index.get_level_values("icustay_id"))
    df = vitals_labs[
        vitals_labs.index.get_level_values("icustay_id").isin(keep_ids)
        & (vitals_labs.index.get_level_values("hours_in") < window)
    ]
    if df.columns.nlevels > 2:
        df = df.copy()
        df.columns = df.columns.droplevel([n for n in ("label", "LEVEL1") if n in df.columns.names])
    means = df.loc[:, idx[:, "mean"]]
    subjects = np.array(sorted(set(means.index.get_level_values("subject_id"))))
    rng = np.random.default_rng(seed)
    subjects = rng.permutation(subjects)
    n_train = int(train_frac * len(subjects))
    ids = ["subject_id", "hadm_id", "icustay_id"]
    train_mask = means.index.get_level_values("subject_id").isin(subjects[:n_train])
    mu, sd = means[train_mask].mean(axis=0), means[train_mask].std(axis=0)
    sd = sd.where(sd > 0, 1.0)
    out = []
    for mask in (train_mask, ~train_mask):
        part = (means[mask] - mu) / sd
        stay_mean = part.groupby(level=ids).transform("mean")
        part = part.groupby(level=ids).ffill().fillna(stay_mean).fillna(0.0)
        part = part.sort_index()
        n_stays = part.index.droplevel("hours_in").nunique()
        arr = part.to_numpy(dtype=np.float32)
        if arr.shape[0] != n_stays * window:
            raise DataFormatError(f"MIMIC-Extract vitals_labs: expected {window} hourly rows per stay, "
                                  f"found {arr.shape[0]} rows for {n_stays} stays")
        out.append(arr.reshape(n_stays, window, arr.shape[1]))
    names = [str(c[0]) for c in means.columns]
    return out[0], out[1], names


class MIMICIIIDataModule(TimeSeriesDataModule):
    """``datamodule=mimiciii``: first 24 ICU hours of MIMIC-III stays (restricted data, never downloaded).

    Expects the MIMIC-Extract output ``data_dir/all_hourly_data.h5`` (tables ``patients`` and
    ``vitals_labs``), exactly as fdiff. Preprocessing as fdiff: :func:`mimic_extract_to_arrays`
    (80/20 split by subject with ``seed``, 104 variables), then the ``n_feats`` (40) variables with the
    largest train standard deviation. The arrays are cached in ``data_dir/tsdiff_cache_mimiciii.npz``;
    reading the h5 file needs PyTables (``pip install tables``). Validation stays are carved from the
    training stays (``test_fraction`` is ignored).
    """

    dataset_name = "mimiciii"
    layout = "collection"
    default_seq_len = 24

    def __init__(
        self,
        data_dir: str = "data/mimiciii",
        n_feats: int = 40,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(data_dir=data_dir, **kwargs)
        if int(n_feats) < 1:
            raise ValueError(f"n_feats={n_feats} must be >= 1")
        self.n_feats = int(n_feats)

    @property
    def _cache_path(self) -> Path:
        return self.data_dir / f"tsdiff_cache_mimiciii_seed{self.seed}.npz"

    def prepare_data(self) -> None:
        if not self._cache_path.is_file() and not (self.data_dir / "all_hourly_data.h5").is_file():
            self.acquire()

    def _require_local_copy(self) -> None:
        self.prepare_data()

    def acquire(self) -> None:
        target = (self.data_dir / "all_hourly_data.h5").resolve()
        raise DatasetUnavailableError(
            f"MIMIC-III is a restricted data set and is never downloaded automatically; {target} is missing.\n"
            f"To use it:\n"
            f"  1. Get credentialed access on PhysioNet (https://physionet.org/content/mimiciii/): create an "
            f"account, complete the required CITI 'Data or Specimens Only Research' training and sign the "
            f"data use agreement.\n"
            f"  2. Build the MIMIC-Extract output (https://github.com/MLforHealth/MIMIC_Extract; its default "
            f"pipeline, or its pre-computed all_hourly_data.h5 from the authors' GCP bucket once your "
            f"PhysioNet access is linked).\n"
            f"  3. Place the file at exactly {target} (tables 'patients' and 'vitals_labs').\n"
            f"  4. `pip install tables` so pandas can read HDF5.\n"
            f"Or choose another data set, e.g. datamodule=ecg or the offline datamodule=stocks."
        )

    def load_collection(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache_path.is_file():
            with np.load(self._cache_path, allow_pickle=False) as z:
                train, test, names = z["train"], z["test"], [str(n) for n in z["channels"]]
        else:
            h5 = self.data_dir / "all_hourly_data.h5"
            try:
                statics = pd.read_hdf(h5, "patients")
                vitals = pd.read_hdf(h5, "vitals_labs")
            except ImportError as exc:
                raise DatasetUnavailableError(
                    f"reading {h5} needs PyTables: `pip install tables` ({exc})"
                ) from exc
            train, test, names = mimic_extract_to_arrays(statics, vitals, seed=self.seed)
            np.savez(self._cache_path, train=train, test=test, channels=np.array(names))
        if self.n_feats < train.shape[2]:
            top = np.argsort(-train.std(axis=0).mean(axis=0), kind="stable")[: self.n_feats]
            train, test = train[:, :, top], test[:, :, top]
            names = [names[i] for i in top]
        self.channel_names = names
        return train, test
