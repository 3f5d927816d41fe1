"""L2D-Diff: masked pretraining, the three stages, the cascade sampler and its ablations (tiny shapes)."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from shared_fixtures import one_thread  # noqa: F401

from tsdiff.models.l2d_diff import L2DDiff
from tsdiff.nets.l2d import (
    ConditionalConvDenoiser,
    LatentConditionNet,
    MaskedAutoencoder,
    ResidualMLPDenoiser,
    masked_mse,
)
from tsdiff.sampling import DiffusionSampler
from tsdiff.sampling.cascade import CascadeSampler
from tsdiff.tasks.sampler_cfg import build_sampler

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(latent_dim=4, ae_hidden=8, ae_depth=1, decoder_hidden=16, latent_hidden=16, latent_blocks=1, cond_channels=4,
            cond_hidden=8, data_hidden=8, data_blocks=2, stage_steps=(2, 2, 2))


def _toy(n=32, length=8, channels=2, seed=0):
    """Two classes of sines (different frequencies): a small multi-modal set."""
    g = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None]
    freq = np.where(g.random(n) < 0.5, 0.3, 1.2)[:, None, None]
    phase = g.uniform(0, 6, (n, 1, channels))
    return torch.tensor(np.sin(freq * t + phase), dtype=torch.float32)


def _model(**kw):
    return L2DDiff(2, 8, **{**TINY, **kw})


def test_masked_loss_ignores_unmasked_positions():
    x = torch.randn(3, 6, 2)
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[:, :3] = True
    recon = torch.randn(3, 6, 2, requires_grad=True)
    loss = masked_mse(x, recon, masked)
    changed = recon.detach().clone()
    changed[:, 3:] += 100.0  # unmasked positions only
    assert float(masked_mse(x, changed, masked)) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert (recon.grad[:, 3:] == 0).all() and (recon.grad[:, :3] != 0).any()
    assert float(loss.detach()) == pytest.approx(float(((recon - x)[:, :3] ** 2).mean()), rel=1e-6)


@pytest.mark.slow
def test_autoencoder_reconstructs_after_training():
    x = _toy(32)
    torch.manual_seed(0)
    ae = MaskedAutoencoder(2, 8, latent_dim=4, hidden=16, depth=2, decoder_hidden=32)
    assert ae.encode(x).shape == (32, 4) and ae(x).shape == x.shape
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    before = float(((ae(x) - x) ** 2).mean())
    for _ in range(150):
        loss = ((ae(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(((ae(x) - x) ** 2).mean())
    assert after < 0.25 * before and after < 0.15 * float(x.var())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["autoencoder", "latent", "data"])
def test_each_branch_trains_on_a_toy_set(stage):
    x = _toy(32)
    model = _model()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.autoencoder.named_parameters()}

    def loss_now():  # the same masks / steps / noise every time, averaged over a few draws
        with torch.no_grad():
            return float(np.mean([float(model.stage_loss(stage, x, torch.Generator().manual_seed(s))) for s in range(8)]))

    before = loss_now()
    for _ in range(100):
        loss = model.stage_loss(stage, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss_now() < 0.75 * before
    if stage != "autoencoder":  # later stages leave the pretrained encoder/decoder alone
        assert all(torch.equal(p, frozen[n]) for n, p in model.autoencoder.named_parameters())
        assert bool(model.latent_stats_ready)


def test_stage_schedule_and_argument_errors():
    model = _model(stage_steps=(3, 2, 4))
    assert [model.stage_at(s) for s in (0, 2, 3, 4, 5, 8, 20)] == ["autoencoder"] * 2 + ["latent"] * 2 + ["data"] * 3
    assert _model(variant="data_only", stage_steps=(5, 5, 2)).budget == [0, 0, 2]
    assert _model(variant="latent_only", stage_steps=(1, 1, 0)).stage_at(7) == "latent"
    with pytest.raises(ValueError, match="variant"):
        _model(variant="both")
    with pytest.raises(ValueError, match="stage_steps"):
        _model(stage_steps=(1, 1))
    with pytest.raises(ValueError, match="positive budget"):
        _model(stage_steps=(1, 0, 1))
    with pytest.raises(ValueError, match="n_channels"):
        L2DDiff()
    with pytest.raises(ValueError, match="latent code"):
        _model().denoise(torch.zeros(2, 8, 2), torch.zeros(2), torch.zeros(2, 3))


@pytest.mark.parametrize("variant,n_stages", [("full", 2), ("latent_only", 1), ("data_only", 1)])
def test_cascade_samples_shapes_seeded(variant, n_stages):
    model = _model(variant=variant, stage_steps=(1, 1, 1)).eval()
    stages = model.cascade_stages()
    assert len(stages) == n_stages
    sampler = CascadeSampler(stages, solver="ddim", sample_batch_size=3, progress=False)
    a, stats = sampler.sample(5, 4, seed=1, return_stats=True)
    assert a.shape == (5, 8, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(sampler.sample(5, 4, seed=1), a, rtol=0, atol=0)
    assert [s["stage"] for s in stats.stages] == [s.name for s in stages]
    assert stats.network_evaluations == sum(s["network_evaluations"] for s in stats.stages)
    if variant == "full":
        steps = CascadeSampler(stages, solver="dpm_solver++", stage_steps=[3, 6], progress=False)
        steps.sample(2, seed=0)
        assert [s["num_steps"] for s in steps.last_stats.stages] == [3, 6]
        with pytest.raises(ValueError, match="stage_steps"):
            CascadeSampler(stages, stage_steps=[3], progress=False)


def test_cascade_feeds_the_latent_sample_as_condition():
    """Stage 2 of the full model is the data branch given the stage-1 latent, drawn from one generator."""
    model = _model().eval()
    cascade = CascadeSampler(model.cascade_stages(), solver="ddim", progress=False)
    x = cascade.sample(4, 3, seed=7)
    gen = torch.Generator().manual_seed(7)
    latent = DiffusionSampler(model.cascade_stages()[0].model, solver="ddim", progress=False).sample(4, 3, generator=gen)
    assert latent.shape == (4, TINY["latent_dim"])
    data = DiffusionSampler(model, solver="ddim", progress=False).sample(4, 3, cond={"r": latent}, generator=gen)
    torch.testing.assert_close(x, data, rtol=0, atol=0)


def test_classifier_free_guidance_combines_conditional_and_null():
    model = _model().eval()
    x, t, r = torch.randn(3, 8, 2), torch.full((3,), 5), torch.randn(3, TINY["latent_dim"])
    with torch.no_grad():
        cond, null = model.denoise(x, t, r), model.denoise(x, t, None)
        model.guidance_scale = 2.0
        torch.testing.assert_close(model.denoise(x, t, {"r": r}), 3 * cond - 2 * null, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.denoise(x, t, None), null)


def test_build_sampler_picks_the_cascade_for_a_cascaded_model():
    cfg = OmegaConf.create({"sample_batch_size": 4, "sampler": {"solver": None, "steps": 3, "stage_steps": [2, 3]}})
    sampler = build_sampler(cfg, _model().eval(), "cpu", progress=False)
    assert isinstance(sampler, CascadeSampler)
    assert sampler.sample(2, 3, seed=0).shape == (2, 8, 2)
    assert [s["num_steps"] for s in sampler.last_stats.stages] == [2, 3]


def test_network_shapes():
    r = torch.randn(3, 4)
    assert ResidualMLPDenoiser(4, 16, 2)(r, torch.arange(3.0)).shape == (3, 4)
    c = LatentConditionNet(4, 10, cond_channels=5, hidden=8)(r)
    assert c.shape == (3, 10, 5) and sum(isinstance(m, torch.nn.Conv1d) for m in LatentConditionNet(4, 10).modules()) == 5
    assert ConditionalConvDenoiser(2, 10, 5, 8, 3)(torch.randn(3, 10, 2), torch.arange(3.0), c).shape == (3, 10, 2)
    with pytest.raises(ValueError, match="latent input"):
        ResidualMLPDenoiser(4)(torch.randn(3, 5), torch.arange(3.0))


def test_per_stage_ema_is_copied_in_when_the_stage_ends():
    model = _model(stage_steps=(2, 2, 2), ema_decay=0.995)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in (1, 2):  # "optimizer steps" of the autoencoder stage: +1 each
        with torch.no_grad():
            for p in model.stage_parameters("autoencoder").values():
                p.add_(1.0)
        model._update_ema(step)
    # warm-up: the average starts at the first weights (w + 1), then moves by 1 - 2/11 toward w + 2
    for name, p in model.stage_parameters("autoencoder").items():
        torch.testing.assert_close(p, start[name] + 1 + 9 / 11)
    assert not model._ema  # nothing is held once the stage is done
    for name, p in model.stage_parameters("latent").items():
        torch.testing.assert_close(p, start[name])  # other stages untouched
    model._update_ema(3)
    assert set(model._ema) == set(model.stage_parameters("latent"))
    assert set(model.stage_parameters("data")) >= {"null_code"}


def test_guidance_scale_is_a_sampling_setting_of_the_sample_command():
    model = _model().eval()
    cfg = OmegaConf.create({"sample_batch_size": 4, "sampler": {"solver": None, "steps": 3},
                            "model_settings": {"guidance_scale": 1.5}})
    build_sampler(cfg, model, "cpu", progress=False)
    assert model.guidance_scale == 1.5
    with pytest.raises(ValueError, match="no sampling-time setting 'latent_dim'"):
        build_sampler(OmegaConf.merge(cfg, {"model_settings": {"latent_dim": 4}}), model, "cpu", progress=False)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        build_sampler(OmegaConf.merge(cfg, {"model_settings": {"guidance_scale": -1}}), model, "cpu", progress=False)


def test_latent_statistics_windows_span_a_time_ordered_training_set():
    """More training windows than latent_stats_windows: a seeded random subset, not the first ones (on a
    time-ordered series the first ones are one period only)."""
    ordered = np.arange(100, dtype=np.float32)[:, None, None] * np.ones((1, 8, 2), dtype=np.float32)

    class DM:
        def train_array(self, split):
            return ordered

    picks = []
    for _ in range(2):
        m = _model(latent_stats_windows=10)
        m.on_datamodule_ready(DM())
        picks.append(m._train_windows[:, 0, 0])
    assert len(picks[0]) == 10 and torch.equal(picks[0], picks[1])  # seeded
    assert float(picks[0].max()) > 50 and len(set(picks[0].tolist())) == 10  # spread over the set, no repeats
