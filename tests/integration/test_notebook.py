"""The results notebook is executed for real against a run made by the train and sample tasks."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import compose_cfg, train_tiny

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "results.ipynb"


def test_results_notebook_runs_and_reads_saved_metrics(tmp_path, monkeypatch):
    from tsdiff.tasks.ablation_cache import run as ablation
    from tsdiff.tasks.sample import run as sample

    runs = tmp_path / "runs"
    out = train_tiny(runs)
    sample(compose_cfg("sample", [f"runs_dir={runs}", "num_samples=8", "num_diffusion_steps=3", "progress=false",
                                  "logger=none", "num_directions=20", "quality.num_runs=2",
                                  "quality.context_fid_iterations=2", "quality.discriminative_iterations=2"]))
    ablation(compose_cfg("ablation_cache", [f"runs_dir={runs}", f"model_id={out['run_id']}", "num_samples=4",
                                            "num_diffusion_steps=4", "batch_size=4", "repeats=1", "warmup=0",
                                            "num_directions=20", "num_threads=1"]))
    monkeypatch.setenv("TSDIFF_RUNS_DIR", str(runs))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert out["run_id"] in text and "gaussian" in text and "sliced_wasserstein" in text
    assert "held_out" in text and "discriminative_ci95" in text  # the quality verdict table
    assert "-- ablation" in text and "no_feedback" in text  # the saved ablation is found and tabulated
    assert list((runs / out["run_id"] / "samples").glob("*/samples_vs_real.png"))
