"""Run lifecycle: status kept true on interrupts and failures, resume continues a run exactly, `latest` skips
broken runs and says so."""

import json
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY_SCORE, compose_cfg
from tsdiff.runs import resolve_run_dir

EPOCHS = 4
BATCHES = 3


def _cfg(runs_dir, *extra):
    return compose_cfg("train", [
        "datamodule=synthetic", "datamodule.n_samples=600", "trainer=fast", f"trainer.max_epochs={EPOCHS}",
        f"trainer.limit_train_batches={BATCHES}", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "logger=csv", f"runs_dir={runs_dir}", *TINY_SCORE, *extra,
    ])


def _train(runs_dir, *extra):
    from tsdiff.tasks.train import run

    return run(_cfg(runs_dir, *extra))


def _info(run_dir) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def _signal_after_epoch(monkeypatch, signum, epoch):
    """Send ``signum`` to this process once validation of ``epoch`` ends (as a user's Ctrl+C or a scheduler's kill)."""
    def hook(self):
        if not self.trainer.sanity_checking and self.current_epoch == epoch:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(pl.LightningModule, "on_validation_epoch_end", hook)


def _final_weights(run_dir):
    state = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"], state["global_step"]


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    from tsdiff.tasks.train import run

    ref = _train(tmp_path / "a", "run_id=ref")

    runs = tmp_path / "b"
    _signal_after_epoch(monkeypatch, signal.SIGINT, epoch=1)
    with pytest.raises(SystemExit) as exit_info:
        _train(runs, "run_id=cut")
    assert exit_info.value.code == 130
    info = _info(runs / "cut")
    assert info["status"] == "interrupted" and info["last_step"] == 2 * BATCHES
    assert "resume=cut" in capsys.readouterr().out

    monkeypatch.undo()
    resumed = run(compose_cfg("train", [f"runs_dir={runs}", "resume=cut"]))
    info = _info(runs / "cut")
    assert info["status"] == "done" and len(info["resumed"]) == 1
    assert resumed["optimizer_steps"] == ref["optimizer_steps"] == EPOCHS * BATCHES

    # same weights (EMA included), optimizer-step counter and validation loss as the uninterrupted run
    w_ref, step_ref = _final_weights(ref["run_dir"])
    w_res, step_res = _final_weights(resumed["run_dir"])
    assert step_ref == step_res
    for key in w_ref:
        torch.testing.assert_close(w_res[key], w_ref[key], rtol=1e-4, atol=1e-5, msg=key)
    assert resumed["metrics"]["val/loss"] == pytest.approx(ref["metrics"]["val/loss"], rel=1e-3)
    # the loss curve joins: csv/ holds epochs 0-1, csv-1/ (the resumed part) 2-3, same values as the reference
    def val_losses(path):
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
        return {int(r["epoch"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}

    joined = {**val_losses(runs / "cut" / "csv" / "metrics.csv"), **val_losses(runs / "cut" / "csv-1" / "metrics.csv")}
    assert sorted(joined) == list(range(EPOCHS))
    assert joined == pytest.approx(val_losses(Path(ref["run_dir"]) / "csv" / "metrics.csv"), rel=1e-4)


def test_sigterm_saves_a_checkpoint_and_marks_the_run_interrupted(tmp_path, monkeypatch):
    _signal_after_epoch(monkeypatch, signal.SIGTERM, epoch=0)
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, "run_id=term", "trainer.max_epochs=3")
    assert exit_info.value.code == 143
    info = _info(tmp_path / "term")
    assert info["status"] == "interrupted" and info["last_step"] >= BATCHES
    assert (tmp_path / "term" / "checkpoints" / "last.ckpt").is_file()


def test_failure_before_the_first_checkpoint_leaves_no_run_folder(tmp_path, monkeypatch):
    def boom(self, batch, batch_idx):
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr("tsdiff.models.score_models.ScoreModule.training_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        _train(tmp_path, "run_id=early")
    assert not (tmp_path / "early").exists()


def test_failure_after_a_checkpoint_marks_the_run_failed_and_it_can_resume(tmp_path, monkeypatch):
    from tsdiff.models.score_models import ScoreModule
    from tsdiff.tasks.train import run

    original = ScoreModule.training_step

    def fail_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 2:
            raise RuntimeError("disk full")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ScoreModule, "training_step", fail_in_epoch_two)
    with pytest.raises(RuntimeError, match="disk full"):
        _train(tmp_path, "run_id=late")
    info = _info(tmp_path / "late")
    assert info["status"] == "failed" and "disk full" in info["error"] and info["last_step"] == 2 * BATCHES
    monkeypatch.undo()
    out = run(compose_cfg("train", [f"runs_dir={tmp_path}", "resume=late"]))
    assert out["optimizer_steps"] == EPOCHS * BATCHES and _info(tmp_path / "late")["status"] == "done"


def test_latest_skips_unusable_runs_and_says_which(tmp_path, capsys):
    _train(tmp_path, "run_id=good", "trainer.max_epochs=1")
    broken = tmp_path / "zz-killed"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "config.yaml").write_text("score_model: {}\n")
    (broken / "run.json").write_text(json.dumps({"run_id": "zz-killed", "created": "2999-01-01T00:00:00+00:00",
                                                 "status": "training"}))
    capsys.readouterr()
    assert resolve_run_dir("latest", tmp_path, require="checkpoint").name == "good"
    out = capsys.readouterr().out
    assert "model_id=latest -> run 'good' (done)" in out and "zz-killed (no checkpoint)" in out


def test_resume_refuses_changes_to_the_model(tmp_path):
    from tsdiff.tasks.cli import run_task
    from tsdiff.tasks.train import run

    _train(tmp_path, "run_id=done1", "trainer.max_epochs=1")
    with pytest.raises(SystemExit) as exit_info:
        run_task(run, compose_cfg("train", [f"runs_dir={tmp_path}", "resume=done1"]))
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_two_process_ddp_with_the_wandb_logger_is_clean_on_every_rank(tmp_path):
    """Issue 18: rank 1 used to raise on the wandb summary write (and still exit 0); ranks printed different losses."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, str(repo / "cmd" / "train.py"), f"runs_dir={tmp_path / 'runs'}", "run_id=ddp", "trainer=ddp",
         "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "datamodule=synthetic", "datamodule.n_samples=400", *TINY_SCORE],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "TypeError" not in proc.stderr
    finals = [line for line in proc.stdout.splitlines() if "val/loss:" in line]
    assert len(finals) == 1, proc.stdout  # one report (rank 0), averaged over the ranks
    assert _info(tmp_path / "runs" / "ddp")["status"] == "done"
    assert not (tmp_path / "runs" / ".hydra").exists() and not list(tmp_path.glob("*.log"))
