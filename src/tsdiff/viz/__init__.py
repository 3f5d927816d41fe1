"""Figures of tsdiff results (matplotlib), used by ``notebooks/results.ipynb``.

Each helper takes arrays or result rows (what :mod:`tsdiff.results` loads) and returns a matplotlib
figure; none reads files or computes a metric of its own. Modules: ``generation`` (generated vs real
series, mean power spectra, a 2-D embedding of windows), ``pareto`` (the cache's speed-vs-quality
curves) and ``fanchart`` (forecast fan charts). Import the module you need; this package imports nothing.
"""
