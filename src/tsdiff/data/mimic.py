"""MIMIC-III (restricted, PhysioNet credentialed access): read from a local extract, never downloaded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError

log = logging.getLogger(__name__)


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
