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
from typing import Any

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import bundled_bytes, check_length, read_numeric_csv

__all__ = [
    "StocksDataModule",
    "EnergyDataModule",
    "ECGDataModule",
    "NASDAQDataModule",
    "NASADataModule",
    "USDroughtsDataModule",
    "MIMICIIIDataModule",
    "smooth_frequency",
    "mimic_extract_to_arrays",
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


# the Kaggle collections and MIMIC-III live in their own modules; re-exported here for old imports
from tsdiff.data.kaggle_collections import NASADataModule, NASDAQDataModule, USDroughtsDataModule  # noqa: E402
from tsdiff.data.mimic import MIMICIIIDataModule, mimic_extract_to_arrays  # noqa: E402
