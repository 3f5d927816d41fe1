"""K-ProtoDiff and its Diffusion-TS baseline through the shared commands: train (cmd/train.py's task) on the
Diffusion-TS sines in [-1, 1], then sample with R-Sampling and the plain solver and judge the samples
(cmd/sample.py's task: Context-FID + discriminative vs the training windows, next to the fitted Gaussian)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_tiny
from test_train_sample_cmds import sample_run

TINY = ["model.net.d_model=8", "model.net.num_heads=2", "model.net.dim_feedforward=16", "model.net.n_encoder_layers=1",
        "model.net.n_decoder_layers=1", "model.net.step_sinusoid_dim=8", "model.schedule.num_timesteps=50",
        "datamodule.n_samples=200"]


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [("kprotodiff", ["model.prototypes.n_prototypes=2"]), ("diffusion_ts", []),
                                          ("kprotodiff", ["model.prototypes.n_prototypes=2", "model.prototypes.channelwise=true",
                                                          "model.code_segments=[1,2]", "model.prior_bank=64"])])
def test_train_sample_with_reflection_and_evaluate(runs_dir, model, extra):
    out = train_tiny(runs_dir, f"model={model}", *TINY, *extra, datamodule="sines")
    run_dir = Path(out["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["model_kwargs"] == {"n_channels": 5, "max_len": 24}
    plain = sample_run(runs_dir, run_dir.name, "sampler=auto")
    refl = sample_run(runs_dir, run_dir.name, "sampler=reflection", "sampler.solver.fraction=0.4", "sampler.solver.repeats=2")
    for res in (plain, refl):
        samples = np.load(Path(res["sample_dir"]) / "samples.npy")
        assert samples.shape == (16, 24, 5) and np.isfinite(samples).all()
        quality = res["quality"]
        assert set(quality["sets"]) == {"model", "gaussian", "held_out"}
        assert set(quality["beats_gaussian"]) == {"context_fid", "discriminative"}
    # 5 steps: round(0.4 x 4) = 2 reflected transitions x 2 repeats = 4 extra network evaluations
    assert plain["sampling"]["network_evaluations"] == 5 and plain["sampling"]["solver"] == "ddim"
    assert refl["sampling"]["network_evaluations"] == 9 and refl["sampling"]["solver"] == "reflection"
    if model == "kprotodiff":  # classifier-free guidance on the code, a sampling-time setting of the trained run
        guided = sample_run(runs_dir, run_dir.name, "sampler=auto", "+model_settings.guidance_scale=1")
        g, p = (np.load(Path(r["sample_dir"]) / "samples.npy") for r in (guided, plain))
        assert g.shape == p.shape and np.isfinite(g).all() and np.abs(g - p).max() > 1e-4
    if "model.prior_bank=64" in extra:  # channel-wise, multi-scale codes: the prior bank was refilled when training ended
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        assert int(state["code_bank_seen"]) == 64 and state["code_bank"].shape == (64, 2 * 5 * (1 + 2))
