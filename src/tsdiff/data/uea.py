"""Class-labelled UCR/UEA sets in the sktime/aeon ``.ts`` text format: the multi-modal data of L2D-Diff.

L2D-Diff's claim is about *multi-modal* data (class-labelled sets whose classes look different), so the
unconditional generators are also trained on the windows of classification sets, with the labels kept
aside to check that samples cover every class (:mod:`tsdiff.metrics.class_coverage`).

Reader. A small parser of the ``.ts`` format (header lines ``@problemName``, ``@dimensions``,
``@equalLength``, ``@classLabel true <labels>``, ``@data``; then one series per line, the channels
separated by ``:``, values by ``,``, the class label last; ``.ts.gz`` is read transparently). We parse
it ourselves instead of depending on aeon's loader: aeon pulls in numba, scikit-learn, scipy and
deprecated, well over 100 MB, for ~60 lines of parsing. Timestamped series (``@timeStamps true``) and
missing values (``?``) are refused with a clear error (no set we use has them).

Variable length (JapaneseVowels: 7-29 steps). ``length_policy``:

* ``resample`` (default): linear interpolation of every series to ``seq_len`` steps. It keeps each
  utterance whole (its start, end and shape) and gives equal-length windows without artificial values;
  the price is that a 7-step series is stretched.
* ``pad``: repeat the last value up to ``seq_len`` (aeon's "_eq" versions do the same); longer series
  are cropped.
* ``crop``: keep the first ``seq_len`` steps; shorter series are an error.

Splits: the archive's TRAIN file is the pool (val carved out of it at random with ``seed``), its TEST
file the test split; ``merge_test=true`` pools both files and splits them at random (``test_fraction``),
which gives a generator more training windows on small sets (BasicMotions: 36 -> 64). ``labels(split)`` returns the class of every window of a split.

Data sets: ``japanese_vowels`` is bundled (UCI, CC BY 4.0; ``bundled/ATTRIBUTION.md``); any other set
(``BasicMotions``, ``CharacterTrajectories``, ``ECG5000``, ``ArabicDigits`` ...) is read from
``<data_dir>/<name>_TRAIN.ts`` and ``<data_dir>/<name>_TEST.ts`` (from timeseriesclassification.com,
or the ``aeon`` / ``sktime`` wheels: ``pip download --no-deps aeon`` and unzip ``aeon/datasets/data``).
With ``kaggle_slug=<owner/dataset>`` a missing pair is downloaded from that Kaggle data set (lazy ``kaggle``
import, :mod:`tsdiff.data.kaggle`); the files may sit in any sub-folder of the archive. Kaggle hosts several
mirrors of the archive under different owners and layouts, so tsdiff names none by default: pick the one you
trust, and the reader checks what arrives.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule
from tsdiff.data.csvio import bundled_bytes
from tsdiff.data.errors import DataFormatError, DatasetUnavailableError
from tsdiff.data.kaggle import download_kaggle_dataset

__all__ = ["LENGTH_POLICIES", "JapaneseVowelsDataModule", "UEADataModule", "parse_ts", "read_ts", "to_length"]

LENGTH_POLICIES = ("resample", "pad", "crop")


def parse_ts(text: str, where: str = ".ts file") -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """``(series, labels, class_names)``: ``series[i]`` is ``(length_i, channels)`` float64, ``labels[i]``
    the index of its class in ``class_names`` (the order of the ``@classLabel`` header)."""
    header: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise DataFormatError(f"{where}: data before the @data line; is this a .ts file?")
        key, _, value = line[1:].partition(" ")
        if key.lower() == "data":
            break
        header[key.lower()] = value.strip()
    else:
        raise DataFormatError(f"{where}: no @data line; is this a .ts file (sktime/aeon format)?")
    if header.get("timestamps", "false").lower() == "true":
        raise DataFormatError(f"{where}: timestamped series are not supported; convert it to plain values first")
    label_field = header.get("classlabel", "false").split()
    if not label_field or label_field[0].lower() != "true" or len(label_field) < 2:
        raise DataFormatError(f"{where}: needs '@classLabel true <labels>' (a classification set)")
    classes = label_field[1:]
    index = {c: i for i, c in enumerate(classes)}
    series, labels = [], []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        *channels, label = line.split(":")
        if label not in index:
            raise DataFormatError(f"{where}: data line {n} has class {label!r}, not one of {classes}")
        if "?" in line:
            raise DataFormatError(f"{where}: data line {n} has missing values ('?'); impute them before loading")
        try:
            rows = [np.array(c.split(","), dtype=np.float64) for c in channels]
        except ValueError:
            raise DataFormatError(f"{where}: data line {n} holds a non-numeric value") from None
        if not rows or len({len(r) for r in rows}) != 1:
            raise DataFormatError(f"{where}: data line {n}: channels of different lengths {[len(r) for r in rows]}")
        series.append(np.stack(rows, axis=1))
        labels.append(index[label])
    if not series:
        raise DataFormatError(f"{where}: no series after @data")
    if len({s.shape[1] for s in series}) != 1:
        raise DataFormatError(f"{where}: series with different numbers of channels")
    return series, np.asarray(labels, dtype=np.int64), classes


def read_ts(path: str | Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """:func:`parse_ts` of a ``.ts`` or ``.ts.gz`` file."""
    path = Path(path)
    raw = path.read_bytes()
    return parse_ts(_text(raw, path.name), str(path))


def _text(raw: bytes, name: str) -> str:
    return (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")


def to_length(series: np.ndarray, length: int, policy: str = "resample") -> np.ndarray:
    """One ``(T, C)`` series brought to ``(length, C)`` by ``policy`` (see the module docstring)."""
    t = len(series)
    if policy == "resample":
        if t == length:
            return series
        if t == 1:
            return np.repeat(series, length, axis=0)
        grid = np.linspace(0, t - 1, length)
        return np.stack([np.interp(grid, np.arange(t), series[:, c]) for c in range(series.shape[1])], axis=1)
    if policy == "pad":
        return series[:length] if t >= length else np.concatenate([series, np.repeat(series[-1:], length - t, 0)])
    if policy == "crop":
        if t < length:
            raise DataFormatError(f"a series has {t} steps, fewer than seq_len={length}; use length_policy=resample or pad, "
                                  "or a smaller datamodule.seq_len")
        return series[:length]
    raise ValueError(f"length_policy={policy!r} is unknown; choose one of {', '.join(LENGTH_POLICIES)}")


class UEADataModule(TimeSeriesDataModule):
    """``datamodule=uea datamodule.name=BasicMotions``: a labelled UCR/UEA set from local ``.ts`` files.

    Extra args: ``name`` (the files' prefix), ``length_policy`` (resample | pad | crop), ``merge_test``
    (pool TRAIN and TEST and split at random), ``kaggle_slug`` (download a missing pair). ``seq_len=null``
    takes the longest series of the TRAIN file. One window per series (the stride is ``seq_len``).
    """

    dataset_name = "uea"
    layout = "collection"
    default_seq_len = 1  # replaced by the data's longest series when seq_len is null

    def __init__(self, data_dir: str = "data/uea", name: str = "BasicMotions", length_policy: str = "resample",
                 merge_test: bool = False, kaggle_slug: str | None = None, **kwargs: Any) -> None:
        if length_policy not in LENGTH_POLICIES:
            raise ValueError(f"length_policy={length_policy!r} is unknown; choose one of {', '.join(LENGTH_POLICIES)}")
        self._auto_len = kwargs.get("seq_len") is None
        if kwargs.get("stride") is not None:
            raise ValueError("UEA sets give one window per series; leave datamodule.stride=null")
        super().__init__(data_dir=data_dir, **kwargs)
        self.name, self.length_policy, self.merge_test = str(name), length_policy, bool(merge_test)
        self.kaggle_slug = kaggle_slug
        self.class_names: list[str] = []
        self._labels: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ reading
    def _files(self) -> dict[str, tuple[str, bytes]]:
        out = {}
        for part in ("TRAIN", "TEST"):
            found = self._find(part)
            if found is None:
                kaggle = (f"; or set datamodule.kaggle_slug=<owner/dataset> to download them" if self.kaggle_slug is None
                          else f"; the Kaggle data set '{self.kaggle_slug}' did not contain them")
                raise DatasetUnavailableError(
                    f"{self.name}: {self.data_dir / f'{self.name}_{part}.ts'} not found. Put {self.name}_TRAIN.ts and "
                    f"{self.name}_TEST.ts into {self.data_dir} (from timeseriesclassification.com, or `pip download "
                    f"--no-deps aeon` and unzip aeon/datasets/data/{self.name}), or set datamodule.data_dir{kaggle}")
            out[part] = (found.name, found.read_bytes())
        return out

    def _find(self, part: str) -> Path | None:
        """``<name>_<part>.ts`` or ``.ts.gz`` in ``data_dir``, else in one of its sub-folders (archive layouts)."""
        names = (f"{self.name}_{part}.ts", f"{self.name}_{part}.ts.gz")
        direct = next((self.data_dir / n for n in names if (self.data_dir / n).is_file()), None)
        if direct is not None or not self.data_dir.is_dir():
            return direct
        return next((p for n in names for p in sorted(self.data_dir.rglob(n)) if p.is_file()), None)

    def acquire(self, api: Any = None) -> None:
        """Download a missing TRAIN/TEST pair from ``kaggle_slug`` (``api``: a test double of ``kaggle.api``)."""
        if self.kaggle_slug is not None and (self._find("TRAIN") is None or self._find("TEST") is None):
            download_kaggle_dataset(self.kaggle_slug, self.data_dir, [], api=api)
        self._files()  # raises the instructions when the files are still missing

    def prepare_data(self) -> None:
        self.acquire()

    def _require_local_copy(self) -> None:
        return None  # load_collection reads (and checks) the files itself

    def load_collection(self) -> tuple[np.ndarray, np.ndarray | None]:
        parts = {}
        for part, (fname, raw) in self._files().items():
            parts[part] = parse_ts(_text(raw, fname), f"{self.name} {fname}")
        (tr, ytr, classes), (te, yte, classes_te) = parts["TRAIN"], parts["TEST"]
        if classes != classes_te or tr[0].shape[1] != te[0].shape[1]:
            raise DataFormatError(f"{self.name}: TRAIN and TEST files disagree on the classes or the number of channels")
        if self._auto_len:
            self._seq_len = max(len(s) for s in tr)
            self.stride = self._seq_len
        length = self._seq_len
        pool = np.stack([to_length(s, length, self.length_policy) for s in tr])
        test = np.stack([to_length(s, length, self.length_policy) for s in te])
        self.class_names = list(classes)
        self.channel_names = [f"dim_{i}" for i in range(pool.shape[2])]
        # tag every sequence with its index (an extra channel, removed in _split_collection) so that the
        # labels follow the base class's seeded split without re-implementing it
        if self.merge_test:
            pool, ytr, test = np.concatenate([pool, test]), np.concatenate([ytr, yte]), None
        self._pool_labels, self._test_labels = ytr, yte
        tag = np.arange(len(pool), dtype=np.float64)[:, None, None] * np.ones((1, length, 1))
        tagged_test = None if test is None else np.concatenate([test, -np.ones((len(test), length, 1))], axis=2)
        return np.concatenate([pool, tag], axis=2), tagged_test

    def _split_collection(self, pool: np.ndarray, fixed_test: np.ndarray | None) -> dict[str, np.ndarray]:
        parts = super()._split_collection(pool, fixed_test)
        self._labels = {k: self._pool_labels[v[:, 0, -1].astype(np.int64)] for k, v in parts.items()}
        if fixed_test is not None:
            self._labels["test"] = self._test_labels
        return {k: v[..., :-1] for k, v in parts.items()}

    # ------------------------------------------------------------------ labels
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def labels(self, split: str = "train") -> np.ndarray:
        """The class index of every window of ``split`` (aligned with ``train_array(split)``)."""
        self._get(split)  # the usual error before setup()
        return self._labels[split]


class JapaneseVowelsDataModule(UEADataModule):
    """``datamodule=japanese_vowels``: the bundled JapaneseVowels set (12 channels, 9 speakers, 640 series of
    7-29 steps; UCI, CC BY 4.0). Offline; ``data_dir`` is not read."""

    dataset_name = "japanese_vowels"

    def __init__(self, data_dir: str = "data/japanese_vowels", **kwargs: Any) -> None:
        kwargs.setdefault("name", "JapaneseVowels")
        super().__init__(data_dir=data_dir, **kwargs)

    def _files(self) -> dict[str, tuple[str, bytes]]:
        files = self.spec.bundled_files
        return {part: (f, bundled_bytes(f, files[f])) for part in ("TRAIN", "TEST") for f in [f"JapaneseVowels_{part}.ts.gz"]}
