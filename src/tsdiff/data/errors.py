"""Exceptions raised by tsdiff's data layer.

Two kinds of failure need different fixes, so they get different types:

- :class:`DatasetUnavailableError` - the data is not on disk and cannot be fetched (no Kaggle
  credentials, restricted data set such as MIMIC-III). The fix is an action by the user
  (credentials, manual download). It subclasses ``RuntimeError``.
- :class:`DataFormatError` - the data is on disk but is not what the loader expects (NaNs, wrong
  number of columns, series shorter than the requested window, altered bundled file). The fix is to
  repair the file or change a parameter. It subclasses ``ValueError`` because the input is bad.
"""

from __future__ import annotations


class DatasetUnavailableError(RuntimeError):
    """The data set is neither present locally nor obtainable automatically."""


class DataFormatError(ValueError):
    """A data file exists but its content does not match the expected format."""


__all__ = ["DatasetUnavailableError", "DataFormatError"]
