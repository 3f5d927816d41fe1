"""Plots of tsdiff results (matplotlib, Agg backend); import the submodules directly."""
