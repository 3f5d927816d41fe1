"""Results: how tsdiff writes them (:mod:`.io`: atomic, never overwriting), the one layout they follow
(:mod:`.schema`: a versioned envelope around each command's payload) and how to read them back as
tables (:mod:`.tables`, used by ``notebooks/results.ipynb``)."""

from tsdiff.results.io import atomic_replace, free_path, make_dirs, track_new_dirs, write_result
from tsdiff.results.schema import KINDS, SCHEMA_VERSION, Result, ResultFileError, read_result, stamp
from tsdiff.results.tables import (
    benchmark_sections,
    evaluation_rows,
    find_results,
    forecast_rows,
    forecast_table,
    generation_table,
    load_samples,
    pareto_points,
    quality_rows,
    run_config,
    run_info,
    run_label,
    sample_rows,
)

__all__ = [
    "write_result", "free_path", "make_dirs", "track_new_dirs", "atomic_replace",
    "KINDS", "SCHEMA_VERSION", "Result", "ResultFileError", "read_result", "stamp",
    "find_results", "sample_rows", "quality_rows", "evaluation_rows", "benchmark_sections", "forecast_rows", "run_info",
    "run_config", "run_label", "generation_table", "forecast_table", "pareto_points", "load_samples",
]
