"""tsdiff data layer: LightningDataModules for every data set of the paper and the offline benchmarks.

Hydra names (``datamodule=<name>``) and classes:

=============  ==========================  ===============================================
name           class                       source
=============  ==========================  ===============================================
stocks         :class:`StocksDataModule`   bundled (TimeGAN / Diffusion-TS), offline
energy         :class:`EnergyDataModule`   bundled (UCI appliances energy), offline
synthetic      :class:`SyntheticDataModule` generated from ``seed``
beats          :class:`BeatsDataModule`    generated zero-padded heartbeats (length 187)
ecg            :class:`ECGDataModule`      Kaggle shayanfazeli/heartbeat
nasdaq         :class:`NASDAQDataModule`   Kaggle jacksoncrow/stock-market-dataset
nasa           :class:`NASADataModule`     Kaggle patrickfleith/nasa-battery-dataset
usdroughts     :class:`USDroughtsDataModule` Kaggle cdminix/us-drought-meteorological-data
mimiciii       :class:`MIMICIIIDataModule` PhysioNet (restricted; manual download)
=============  ==========================  ===============================================

Class-labelled UCR/UEA sets (:mod:`tsdiff.data.uea`): ``japanese_vowels``
(:class:`JapaneseVowelsDataModule`, bundled, 12 channels, 9 classes) and ``uea``
(:class:`UEADataModule`, local ``.ts`` files such as BasicMotions or ECG5000).

Your own data (:mod:`tsdiff.data.local`): ``npy`` (:class:`NpyDataModule`, windows or one series from a
``.npy`` file) and ``csv`` (:class:`CSVSeriesDataModule`, one series, a column per channel).

Every datamodule yields ``{"x": FloatTensor(batch, seq_len, channels)}`` batches, standardized with
statistics of the training split; see :mod:`tsdiff.data.base`.
"""

from tsdiff.data.beats import BeatsDataModule, make_beats
from tsdiff.data.base import Scaler, TimeSeriesDataModule, WindowDataset, sliding_windows
from tsdiff.data.datamodules import (
    ECGDataModule,
    EnergyDataModule,
    MIMICIIIDataModule,
    NASADataModule,
    NASDAQDataModule,
    StocksDataModule,
    USDroughtsDataModule,
    smooth_frequency,
)
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.local import CSVSeriesDataModule, NpyDataModule
from tsdiff.data.specs import SPECS, DatasetSpec, get_spec
from tsdiff.data.synthetic import SyntheticDataModule, make_sinusoids
from tsdiff.data.uea import JapaneseVowelsDataModule, UEADataModule

DATAMODULES = {
    "stocks": StocksDataModule,
    "energy": EnergyDataModule,
    "synthetic": SyntheticDataModule,
    "beats": BeatsDataModule,
    "ecg": ECGDataModule,
    "nasdaq": NASDAQDataModule,
    "nasa": NASADataModule,
    "usdroughts": USDroughtsDataModule,
    "mimiciii": MIMICIIIDataModule,
    "japanese_vowels": JapaneseVowelsDataModule,
    "uea": UEADataModule,
    "npy": NpyDataModule,
    "csv": CSVSeriesDataModule,
}

__all__ = [
    "BeatsDataModule",
    "CSVSeriesDataModule",
    "NpyDataModule",
    "DATAMODULES",
    "DataFormatError",
    "DatasetSpec",
    "DatasetUnavailableError",
    "ECGDataModule",
    "EnergyDataModule",
    "JapaneseVowelsDataModule",
    "UEADataModule",
    "MIMICIIIDataModule",
    "NASADataModule",
    "NASDAQDataModule",
    "SPECS",
    "Scaler",
    "StocksDataModule",
    "SyntheticDataModule",
    "TimeSeriesDataModule",
    "USDroughtsDataModule",
    "WindowDataset",
    "get_spec",
    "make_beats",
    "make_sinusoids",
    "sliding_windows",
    "smooth_frequency",
]
