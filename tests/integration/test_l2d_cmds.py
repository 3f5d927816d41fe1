"""L2D-Diff end to end in seconds: cmd/train.py's task with the three stages in one fit, then cmd/sample.py's task
sampling the cascade (latent then data) through the shared sampler, evaluated, and the class-coverage command."""

from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg

TINY = ["model.latent_dim=4", "model.ae_hidden=8", "model.ae_depth=1", "model.decoder_hidden=16", "model.latent_hidden=16",
        "model.latent_blocks=1", "model.cond_channels=4", "model.cond_hidden=8", "model.data_hidden=8", "model.data_blocks=2"]
QUALITY_TINY = ["quality.num_runs=2", "quality.context_fid_iterations=2", "quality.discriminative_iterations=3",
                "quality.num_threads=1"]


def _train(runs_dir, model, steps, run_id):
    from tsdiff.tasks.train import run

    return run(compose_cfg("train", [
        f"model={model}", "datamodule=japanese_vowels", "datamodule.batch_size=128", "trainer.max_epochs=-1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.limit_val_batches=1",
        "logger=csv", f"runs_dir={runs_dir}", f"run_id={run_id}", f"model.stage_steps={steps}", *TINY]))


def _sample(runs_dir, run_id, *extra):
    from tsdiff.tasks.sample import run

    return run(compose_cfg("sample", [f"runs_dir={runs_dir}", f"model_id={run_id}", "num_samples=24", "progress=false",
                                      "logger=none", "num_directions=20", *QUALITY_TINY, *extra]))


@pytest.mark.slow
def test_l2d_train_sample_evaluate_and_class_coverage(runs_dir, capsys):
    out = _train(runs_dir, "l2d_diff", "[3,2,3]", "full")
    assert out["optimizer_steps"] == 8  # the model stops itself after its stage budgets
    res = _sample(runs_dir, "full", "sampler=dpm_solver_pp", "+sampler.stage_steps=[3,4]")
    samples = np.load(Path(res["sample_dir"]) / "samples.npy")
    assert samples.shape == (24, 29, 12) and np.isfinite(samples).all()
    stages = res["sampling"]["stages"]
    assert [s["stage"] for s in stages] == ["latent", "data"] and [s["num_steps"] for s in stages] == [3, 4]
    assert res["sampling"]["network_evaluations"] == 7 and set(res["quality"]["sets"]) == {"model", "gaussian", "held_out"}

    _train(runs_dir, "l2d_diff_latent_only", "[2,2,0]", "latent")
    _sample(runs_dir, "latent", "sampler=ddim", "sampler.steps=3")
    from tsdiff.tasks.class_coverage import run

    cov = run(compose_cfg("class_coverage", [f"runs_dir={runs_dir}", "+groups.l2d=[full]", "+groups.latent_only=[latent]",
                                             "classifier_steps=20"]))
    assert set(cov["groups"]) == {"l2d", "latent_only", "gaussian", "held_out"}
    assert len(cov["real_histogram"]) == 9 and 0 <= cov["groups"]["l2d"]["tvd"]["mean"] <= 1
    assert cov["groups"]["l2d"]["context_fid"]["mean"] == res["quality"]["sets"]["model"]["context_fid"]["mean"]
    assert "class coverage on japanese_vowels" in capsys.readouterr().out


def test_l2d_refuses_a_step_budget_below_its_stages(runs_dir):
    from tsdiff.tasks.train import run

    with pytest.raises(ValueError, match="max_steps"):
        run(compose_cfg("train", ["model=l2d_diff", "datamodule=japanese_vowels", "trainer.max_steps=2", "logger=none",
                                  f"runs_dir={runs_dir}", "trainer.enable_progress_bar=false", "model.stage_steps=[2,2,2]", *TINY]))
    assert not any(Path(runs_dir).glob("*/checkpoints/last.ckpt"))


@pytest.mark.slow
def test_l2d_interrupted_mid_stage_resumes_to_the_uninterrupted_result(runs_dir, monkeypatch):
    """Interrupted inside the latent stage (its running average and noise stream in the checkpoint), resumed,
    it ends with the weights of an uninterrupted run."""
    import os
    import signal

    import pytorch_lightning as pl
    import torch

    from tsdiff.tasks.train import run

    ref = _train(runs_dir, "l2d_diff", "[3,3,2]", "ref")  # 2 batches an epoch: stops after epoch 1 = step 4
    monkeypatch.setattr(pl.LightningModule, "on_validation_epoch_end",
                        lambda self: os.kill(os.getpid(), signal.SIGINT) if not self.trainer.sanity_checking
                        and self.current_epoch == 1 else None)
    with pytest.raises(SystemExit):
        _train(runs_dir, "l2d_diff", "[3,3,2]", "cut")
    monkeypatch.undo()
    resumed = run(compose_cfg("train", [f"runs_dir={runs_dir}", "resume=cut", "trainer.enable_progress_bar=false"]))
    assert resumed["optimizer_steps"] == ref["optimizer_steps"] == 8
    w_ref = torch.load(Path(ref["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w_res = torch.load(Path(resumed["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in w_ref:
        torch.testing.assert_close(w_res[key], w_ref[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("model, variant, budget", [(None, "full", [600, 12000, 1500]),
                                                   ("l2d_diff_latent_only", "latent_only", [600, 12000, 0]),
                                                   ("l2d_diff_data_only", "data_only", [0, 0, 1500])])
def test_basicmotions_experiment_builds_the_measured_recipe(tmp_path, model, variant, budget):
    """`+experiment=l2d_basicmotions` = the UEA datamodule with TRAIN + TEST pooled and L2D-Diff with the longer latent
    stage (12000 steps) that keeps BasicMotions' two tight latent clusters apart (docs/l2d_diff.md); with
    `model=<ablation>` on the command line the ablation gets the same stage budgets (like for like, as measured)."""
    from hydra.utils import instantiate

    from tsdiff.models.l2d_diff import L2DDiff

    lines = [f"{','.join(str(i + 0.1 * t) for t in range(6))}:{','.join(str(-t) for t in range(6))}:{'ab'[i % 2]}"
             for i in range(20)]
    header = "@problemName BasicMotions\n@timeStamps false\n@univariate false\n@dimensions 2\n@equalLength true\n@classLabel true a b\n@data\n"
    for part in ("TRAIN", "TEST"):
        (tmp_path / f"BasicMotions_{part}.ts").write_text(header + "\n".join(lines) + "\n")
    extra = [f"model={model}"] if model else []
    cfg = compose_cfg("train", ["+experiment=l2d_basicmotions", f"datamodule.data_dir={tmp_path}", *extra])
    assert cfg.trainer.max_epochs == -1 and cfg.datamodule.merge_test and cfg.datamodule.batch_size == 16
    dm = instantiate(cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.n_classes == 2 and dm.train_array("train").shape[1:] == (6, 2)
    model = instantiate(cfg.model, n_channels=2, max_len=6)
    assert isinstance(model, L2DDiff) and model.variant == variant and model.budget == budget


@pytest.mark.parametrize("model, variant, budget", [(None, "full", [600, 12000, 1500]),
                                                   ("l2d_diff_latent_only", "latent_only", [600, 12000, 0]),
                                                   ("l2d_diff_data_only", "data_only", [0, 0, 1500])])
def test_japanese_vowels_experiment_builds_the_measured_recipe(model, variant, budget):
    """`+experiment=l2d_japanese_vowels` = the bundled JapaneseVowels and the stage budgets measured in docs/l2d_diff.md
    (latent stage 12000 steps), the same budgets for an ablation given on the command line."""
    from hydra.utils import instantiate

    from tsdiff.data import JapaneseVowelsDataModule
    from tsdiff.models.l2d_diff import L2DDiff

    cfg = compose_cfg("train", ["+experiment=l2d_japanese_vowels", *([f"model={model}"] if model else [])])
    assert cfg.trainer.max_epochs == -1 and cfg.datamodule.batch_size == 64 and cfg.datamodule.seq_len == 29
    assert instantiate(cfg.datamodule).__class__ is JapaneseVowelsDataModule
    built = instantiate(cfg.model, n_channels=12, max_len=29)
    assert isinstance(built, L2DDiff) and built.variant == variant and built.budget == budget
