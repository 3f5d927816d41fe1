"""A run that stops inside an epoch (``trainer.max_steps`` or the first Ctrl+C) and is resumed trains exactly what an
uninterrupted run with the final trainer settings trains: same optimizer steps, and (Ctrl+C keeps the live weights)
the same weights, since the checkpoint records the epoch as unfinished and the resumed run skips the used batches."""

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY_SCORE, compose_cfg

BATCHES = 3  # optimizer steps per epoch


def _cfg(runs_dir, *extra):
    return compose_cfg("train", [
        "datamodule=synthetic", "datamodule.n_samples=600", "trainer=fast", f"trainer.limit_train_batches={BATCHES}",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "logger=none", f"runs_dir={runs_dir}",
        *TINY_SCORE, *extra,
    ])


def _weights(run_dir):
    state = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"], state["global_step"], state["epoch"]


def test_run_stopped_by_max_steps_mid_epoch_resumes_with_the_full_epoch_budget(tmp_path, monkeypatch):
    from tsdiff.tasks.train import run

    first = run(_cfg(tmp_path, "run_id=cut", "trainer.max_epochs=-1", f"trainer.max_steps={BATCHES + 1}"))
    assert first["optimizer_steps"] == BATCHES + 1
    assert _weights(first["run_dir"])[2] == 1  # epoch 1 is unfinished: the checkpoint must not count it as done
    longer = ["trainer.max_epochs=2", f"trainer.max_steps={4 * BATCHES}"]
    monkeypatch.setattr("tsdiff.tasks.train._cli_overrides", lambda: longer)  # what Hydra reports from the command line
    resumed = run(compose_cfg("train", [f"runs_dir={tmp_path}", "resume=cut", *longer]))
    ref = run(_cfg(tmp_path, "run_id=ref", "trainer.max_epochs=2", f"trainer.max_steps={4 * BATCHES}"))
    assert resumed["optimizer_steps"] == ref["optimizer_steps"] == 2 * BATCHES  # was BATCHES + 1: one epoch short


def test_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    from tsdiff.tasks.train import run

    ref = run(_cfg(tmp_path, "run_id=ref", "trainer.max_epochs=3"))

    def interrupt(self, outputs, batch, batch_idx):  # Ctrl+C now; the run stops after the next batch, inside epoch 1
        if self.trainer.global_step == BATCHES + 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pl.LightningModule, "on_train_batch_end", interrupt)
    with pytest.raises(SystemExit):
        run(_cfg(tmp_path, "run_id=cut", "trainer.max_epochs=3"))
    monkeypatch.undo()
    assert _weights(tmp_path / "cut")[1:] == (BATCHES + 2, 1)
    resumed = run(compose_cfg("train", [f"runs_dir={tmp_path}", "resume=cut"]))
    assert resumed["optimizer_steps"] == ref["optimizer_steps"] == 3 * BATCHES
    w_ref, w_res = _weights(ref["run_dir"])[0], _weights(resumed["run_dir"])[0]
    for key in w_ref:
        torch.testing.assert_close(w_res[key], w_ref[key], rtol=1e-4, atol=1e-5, msg=key)
    assert resumed["metrics"]["val/loss"] == pytest.approx(ref["metrics"]["val/loss"], rel=1e-3)
