"""The common LightningDataModule of tsdiff: splitting, windowing, standardization, loaders.

Concrete data sets only say how to read their raw data (one long series, or a collection of
independent sequences); everything that affects evaluation fairness lives here, once:

- **Splits are made before windowing.** For one long series (stocks, energy) the train / val / test
  cut is chronological (train = oldest part, test = most recent), and windows are taken inside each
  segment, so no window straddles two splits and no test value leaks into training. This follows the
  chronological protocol of forecasting benchmarks; Diffusion-TS and TimeGAN instead window the
  whole series and shuffle, which leaks overlapping windows between splits - we deliberately do not.
  For collections of independent sequences (ECG beats, NASDAQ stocks, NASA cycles, drought
  counties) whole sequences are assigned to a split at random with ``seed``, as fdiff does
  (``torch.randperm`` with ``train_frac=0.9``), so windows of one sequence stay in one split.
- **Scaling (standard or min-max) is fitted on the training split only**, per channel (mean / std over all train
  time steps), and applied to every split; :attr:`scaler` maps model outputs back to original units.
  fdiff standardizes per (time step, channel) pair; tsdiff's contract is per channel, which keeps
  the scaler independent of ``seq_len`` and valid for any window.
- **Batches are dicts** ``{"x": FloatTensor(batch, seq_len, channels)}`` in the time domain
  (tsdiff's layout is (batch, length, channels), as fdiff's ``X``); frequency-domain models apply
  their own transform.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.kaggle import download_kaggle_dataset, missing_files, unavailable_message
from tsdiff.data.quality import check_training_data
from tsdiff.data.specs import DatasetSpec, get_spec
from tsdiff.data.windows import SCALINGS, Scaler, WindowDataset, sliding_windows

__all__ = ["Scaler", "WindowDataset", "TimeSeriesDataModule", "sliding_windows"]  # the first, second and last from data.windows

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
_SPLITS: tuple[str, ...] = ("train", "val", "test")


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} must be in [0, 1); e.g. datamodule.{name}=0.1")
    return value


class TimeSeriesDataModule(pl.LightningDataModule):
    """Base datamodule; subclasses set ``dataset_name``, ``layout`` and implement a loader.

    Args:
        data_dir: folder holding (or receiving) this data set's files. Hydra configs use
            ``${data_root}/<name>``. Bundled and generated data sets do not read it.
        seq_len: window length; ``None`` means the data set's default (:attr:`default_seq_len`).
        batch_size: loader batch size.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seeds the split of sequence collections, the order of training batches and any
            generated data; the same seed gives the same splits and batches.
        val_fraction: share of the data used for validation (of the series length for one long
            series, of the sequences otherwise; carved out of the training pool when the data set
            ships its own test file, like ECG).
        test_fraction: share used for testing; ignored when the data set has a fixed test file.
        standardize: standardize each channel with train-split statistics (``false`` = raw values);
            ignored when ``scaling`` is given.
        scaling: ``standard`` (per-channel mean/std), ``minmax`` (training range to ``[-1, 1]``, the
            Diffusion-TS / K-ProtoDiff convention) or ``none``; ``None`` follows ``standardize``.
        stride: step between window starts. ``None``: 1 for long series (Diffusion-TS setting),
            ``seq_len`` (non-overlapping) for collections, which with the default ``seq_len`` gives
            exactly one window per sequence as in fdiff.
        drop_last: drop the last incomplete training batch.
        split: how a single long series is cut (collections are always split by sequence).
            ``"chronological"``: train = oldest, then val, then test (forecasting-style; on a
            non-stationary series such as stock prices the test period lies outside the training
            distribution). ``"blocks"``: the series is cut into ``num_blocks`` contiguous blocks that are
            assigned to the splits at random (seeded) in the val/test proportions; windows never straddle
            blocks, so no test window overlaps a training window, yet every split covers the whole time
            range -- the right protocol for judging an unconditional generator against held-out data.
        num_blocks: number of blocks for ``split="blocks"``.
    """

    dataset_name: ClassVar[str] = ""
    layout: ClassVar[Literal["series", "collection"]] = "series"
    default_seq_len: ClassVar[int] = 24

    def __init__(
        self,
        data_dir: str = "data",
        seq_len: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        standardize: bool = True,
        stride: int | None = None,
        drop_last: bool = False,
        split: str = "chronological",
        num_blocks: int = 20,
        scaling: str | None = None,
    ) -> None:
        super().__init__()
        if scaling is not None and scaling not in SCALINGS:
            raise ValueError(f"scaling='{scaling}' is not supported; use one of {', '.join(SCALINGS)} (or null)")
        if split not in ("chronological", "blocks"):
            raise ValueError(f"split='{split}' is not supported; use 'chronological' or 'blocks'")
        if int(num_blocks) < 3:
            raise ValueError(f"num_blocks={num_blocks} must be >= 3 (one block each for train, val and test)")
        self.split = split
        self.num_blocks = int(num_blocks)
        if seq_len is not None and (int(seq_len) != seq_len or seq_len < 1):
            raise ValueError(f"seq_len={seq_len} must be a positive integer (or null for the data set default)")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        if stride is not None and int(stride) < 1:
            raise ValueError(f"stride={stride} must be a positive integer (or null for the default)")
        self.data_dir = Path(data_dir)
        self._seq_len = int(seq_len) if seq_len is not None else int(self.default_seq_len)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        self.test_fraction = _check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} leaves no training "
                f"data; keep their sum below 1 (e.g. 0.1 and 0.1)"
            )
        self.standardize = bool(standardize)
        self.scaling = scaling if scaling is not None else ("standard" if self.standardize else "none")
        if stride is None:
            stride = 1 if self.layout == "series" else self._seq_len
        self.stride = int(stride)
        self.drop_last = bool(drop_last)
        self._windows: dict[str, np.ndarray] | None = None
        self._scaler: Scaler | None = None
        self._n_channels: int | None = None
        self.channel_names: list[str] = []

    # ------------------------------------------------------------------ hooks for subclasses
    @property
    def spec(self) -> DatasetSpec:
        return get_spec(self.dataset_name)

    def load_series(self) -> np.ndarray:
        """(length, channels) raw values of a single long series, in chronological order."""
        raise NotImplementedError

    def load_collection(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(n_sequences, length, channels) raw sequences, plus an optional fixed test set."""
        raise NotImplementedError

    def acquire(self) -> None:
        """Obtain a missing local copy (Kaggle download by default)."""
        spec = self.spec
        if spec.kaggle_slug is None:
            return
        download_kaggle_dataset(spec.kaggle_slug, self.data_dir, spec.expected_files)

    # ------------------------------------------------------------------ Lightning API
    def prepare_data(self) -> None:
        """Download only if a file of the local copy is missing; never touches kaggle otherwise."""
        if missing_files(self.data_dir, self.spec.expected_files):
            self.acquire()

    def setup(self, stage: str | None = None) -> None:
        if self._windows is not None:
            return
        self._require_local_copy()
        if self.layout == "series":
            segments = self._split_series(self.load_series())
        else:
            segments = self._split_collection(*self.load_collection())
        train_raw = segments["train"]
        if isinstance(train_raw, list):
            train_raw = np.concatenate(train_raw, axis=0)
        n_channels = train_raw.shape[-1]
        self._scaler = Scaler.fit_kind(train_raw, self.scaling)
        windows = {}
        for split, raw in segments.items():
            if isinstance(raw, list):  # blocks of one series: windows inside each block only
                parts = [
                    sliding_windows(self._scaler.transform(b.astype(np.float32)).astype(np.float32), self._seq_len, self.stride)
                    for b in raw
                    if len(b) >= self._seq_len
                ]
                windows[split] = (
                    np.concatenate(parts, axis=0) if parts else np.empty((0, self._seq_len, n_channels), np.float32)
                )
                continue
            scaled = self._scaler.transform(raw.astype(np.float32)).astype(np.float32)
            if self.layout == "series":
                windows[split] = sliding_windows(scaled, self._seq_len, self.stride)
            else:
                parts = [sliding_windows(seq, self._seq_len, self.stride) for seq in scaled]
                windows[split] = (
                    np.concatenate(parts, axis=0) if parts else np.empty((0, self._seq_len, n_channels), np.float32)
                )
        self._windows = windows
        self._n_channels = int(n_channels)
        check_training_data(train_raw, windows.get("train"), self.dataset_name)  # warnings only
        log.info(
            "%s: %s windows of length %d with %d channels",
            self.dataset_name,
            {k: len(v) for k, v in windows.items()},
            self._seq_len,
            n_channels,
        )

    def _require_local_copy(self) -> None:
        spec = self.spec
        missing = missing_files(self.data_dir, spec.expected_files)
        if not missing:
            return
        if spec.kaggle_slug is not None:
            raise DatasetUnavailableError(
                unavailable_message(
                    spec.kaggle_slug, self.data_dir, spec.expected_files,
                    f"missing {missing}; call prepare_data() before setup() to download",
                )
            )
        self.acquire()  # restricted data sets raise their own instructions here

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        if generator is not None:
            resumed = getattr(self, "_resume_generator_state", None)
            if resumed is not None:  # a resumed run continues the shuffling where the checkpoint left it
                generator.set_state(resumed)
            self._train_generator = generator
        return DataLoader(
            WindowDataset(self._get(split)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            drop_last=self.drop_last and shuffle,
            persistent_workers=self.num_workers > 0,
        )

    def state_dict(self) -> dict:
        """Saved in checkpoints by Lightning: the shuffling generator, so a resumed run sees the same batches."""
        generator = getattr(self, "_train_generator", None)
        return {"train_generator": generator.get_state()} if generator is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_generator_state = state_dict.get("train_generator")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------------ arrays and metadata
    def _get(self, split: str) -> np.ndarray:
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} must be one of {_SPLITS}")
        if self._windows is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_data() and setup() before reading data")
        return self._windows[split]

    def train_array(self, split: Split = "train") -> np.ndarray:
        """Standardized windows of ``split`` as float32 (N, seq_len, channels)."""
        return self._get(split)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def n_channels(self) -> int:
        if self._n_channels is None:
            raise RuntimeError(f"{type(self).__name__}.n_channels is known after setup()")
        return self._n_channels

    @property
    def scaler(self) -> Scaler:
        if self._scaler is None:
            raise RuntimeError(f"{type(self).__name__}.scaler is fitted in setup()")
        return self._scaler

    # ------------------------------------------------------------------ splitting
    def _split_series(self, series: np.ndarray) -> dict[str, np.ndarray]:
        """Chronological cut (train = oldest, then val, then test) or seeded random blocks (see ``split``)."""
        if self.split == "blocks":
            return self._split_blocks(series)
        length = series.shape[0]
        where = f"{self.dataset_name} series"
        n_test = int(round(length * self.test_fraction))
        n_val = int(round(length * self.val_fraction))
        n_train = length - n_val - n_test
        hint = (
            f" or lower val_fraction/test_fraction (each non-empty split needs at least seq_len steps; "
            f"the series has {length} steps in total)"
        )
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            if n > 0 or name == "train":
                if n < self._seq_len:
                    raise DataFormatError(
                        f"{where}: the {name} segment has {n} time steps, too short for the requested "
                        f"seq_len={self._seq_len}. Fix: use a smaller datamodule.seq_len{hint}."
                    )
        return {
            "train": series[:n_train],
            "val": series[n_train : n_train + n_val],
            "test": series[n_train + n_val :],
        }

    def _split_blocks(self, series: np.ndarray) -> dict[str, list[np.ndarray]]:
        length = series.shape[0]
        block_len = length // self.num_blocks
        if block_len < self._seq_len:
            raise DataFormatError(
                f"{self.dataset_name} series: {self.num_blocks} blocks of {block_len} steps are shorter than "
                f"seq_len={self._seq_len}. Fix: lower datamodule.num_blocks or datamodule.seq_len."
            )
        edges = [i * block_len for i in range(self.num_blocks)] + [length]
        blocks = [series[edges[i] : edges[i + 1]] for i in range(self.num_blocks)]
        order = np.random.default_rng(self.seed).permutation(self.num_blocks)
        n_test = max(1, int(round(self.num_blocks * self.test_fraction))) if self.test_fraction > 0 else 0
        n_val = max(1, int(round(self.num_blocks * self.val_fraction))) if self.val_fraction > 0 else 0
        test_ids, val_ids, train_ids = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        return {
            "train": [blocks[i] for i in sorted(train_ids)],
            "val": [blocks[i] for i in sorted(val_ids)],
            "test": [blocks[i] for i in sorted(test_ids)],
        }

    def _split_collection(self, pool: np.ndarray, fixed_test: np.ndarray | None) -> dict[str, np.ndarray]:
        """Random assignment of whole sequences to splits, deterministic in ``seed``."""
        where = f"{self.dataset_name} sequences"
        length = pool.shape[1]
        if length < self._seq_len:
            raise DataFormatError(
                f"{where}: each sequence has {length} time steps, too short for the requested "
                f"seq_len={self._seq_len}. Fix: use datamodule.seq_len<={length} (or null for {length})."
            )
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(pool.shape[0])
        n = len(order)
        if fixed_test is None:
            n_test = math.ceil(n * self.test_fraction) if self.test_fraction > 0 else 0
            test_idx, order = order[:n_test], order[n_test:]
            test = pool[np.sort(test_idx)]
        else:
            test = fixed_test
        n_val = math.ceil(len(order) * self.val_fraction) if self.val_fraction > 0 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        if len(train_idx) == 0:
            raise DataFormatError(
                f"{where}: only {n} sequence(s); nothing is left for training after the val/test split. "
                f"Fix: lower val_fraction/test_fraction or provide more data."
            )
        return {"train": pool[np.sort(train_idx)], "val": pool[np.sort(val_idx)], "test": test}
