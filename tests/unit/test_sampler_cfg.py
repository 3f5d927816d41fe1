"""The cfg -> DiffusionSampler builder: sampler/ and cache/ groups, their overrides, the older alias names,
and guidance wired from the config."""

import functools

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

from tsdiff.caching import E2CRFCache, NoCache, StepE2CRF, TokenE2CRF
from tsdiff.diffusion.schedules import VPSDE
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import TransformerScoreNet
from tsdiff.tasks.sampler_cfg import build_sampler, num_steps

from shared_fixtures import hydra_conf, one_thread  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread", "hydra_conf")


def constant_x0(x0, x_t, t, step, value):
    """A guidance hook for the test: replace the data prediction by a constant."""
    return torch.full_like(x0, value)


def _cfg(*overrides, name="sample"):
    return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = functools.partial(TransformerScoreNet, d_model=8, num_layers=1, num_heads=2, dim_feedforward=16)
    return ScoreModule(n_channels=2, max_len=8, backbone=net, noise_scheduler=VPSDE(), fourier_transform=False).eval()


def test_groups_choose_solver_steps_and_cache(model):
    cfg = _cfg("sampler=dpm_solver_pp", "sampler.steps=20", "cache=e2crf", "cache.tau_0=0.2")
    s = build_sampler(cfg, model, "cpu")
    assert s.solver_name == "dpm_solver++" and s.solver_kwargs == {} and num_steps(cfg) == 20
    assert isinstance(s.cache, E2CRFCache) and s.cache.tau_0 == 0.2
    assert isinstance(build_sampler(_cfg("cache=e2crf_step"), model, "cpu").cache, StepE2CRF)
    assert isinstance(build_sampler(_cfg("cache=e2crf_token"), model, "cpu").cache, TokenE2CRF)
    no_event = build_sampler(_cfg("cache=e2crf_no_event"), model, "cpu").cache
    assert no_event.step.event_trigger is False and no_event.tau_0 == "auto"
    default = build_sampler(_cfg(), model, "cpu")
    assert isinstance(default.cache, NoCache) and default.solver_name == "euler_maruyama" and num_steps(_cfg()) == 100


def test_sampler_auto_takes_the_models_default_steps_and_a_named_sampler_its_own(model):
    net = functools.partial(TransformerScoreNet, d_model=8, num_layers=1, num_heads=2, dim_feedforward=16)
    nine = ScoreModule(n_channels=2, max_len=8, backbone=net, noise_scheduler=VPSDE(), default_steps=9).eval()
    assert num_steps(_cfg(), nine) == 9 and build_sampler(_cfg(), nine, "cpu").num_diffusion_steps == 9
    assert build_sampler(_cfg(), model, "cpu").num_diffusion_steps == model.default_steps
    assert build_sampler(_cfg("sampler=ddim"), nine, "cpu").num_diffusion_steps == 50
    assert build_sampler(_cfg("sampler.steps=3"), nine, "cpu").num_diffusion_steps == 3


def test_older_names_are_aliases(model):
    cfg = _cfg("solver=ddim", "num_diffusion_steps=7", "use_cache=true", "cache_kwargs.tau_0=0.3", "cache_kwargs.mode=step")
    s = build_sampler(cfg, model, "cpu")
    assert s.solver_name == "ddim" and num_steps(cfg) == 7
    assert isinstance(s.cache, E2CRFCache) and s.cache.tau_0 == 0.3 and s.cache.mode == "step"
    off = build_sampler(_cfg("cache=e2crf", "use_cache=false"), model, "cpu")
    assert isinstance(off.cache, NoCache)
    with pytest.raises(ValueError, match="use_cache is False"):
        build_sampler(_cfg("cache_kwargs.K=3"), model, "cpu")
    with pytest.raises(ValueError, match="cache_kwargs.R"):
        build_sampler(_cfg("cache=e2crf", "cache.R=0"), model, "cpu")


def test_same_config_same_samples_and_solver_options_reach_the_solver(model):
    cfg = _cfg("sampler=ddim", "sampler.steps=4", "sampler.solver.eta=1.0", "progress=false")
    a = build_sampler(cfg, model, "cpu").sample(3, num_steps(cfg), seed=0)
    b = build_sampler(cfg, model, "cpu").sample(3, num_steps(cfg), seed=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    eta0 = _cfg("sampler=ddim", "sampler.steps=4", "progress=false")
    assert not torch.allclose(a, build_sampler(eta0, model, "cpu").sample(3, 4, seed=0))


def test_guidance_is_built_from_the_config(model):
    cfg = _cfg("sampler=ddim", "sampler.steps=3", "progress=false")
    OmegaConf.update(cfg, "sampler.guidance", {"_target_": f"{__name__}.constant_x0", "_partial_": True, "value": 5.0}, force_add=True)
    out = build_sampler(cfg, model, "cpu").sample(2, 3, seed=0)
    torch.testing.assert_close(out, torch.full_like(out, 5.0))


def test_quality_presets_set_the_verdicts_strength_and_the_command_line_still_wins():
    fast = _cfg()
    assert fast.num_samples == 256 and fast.quality.discriminative_iterations == 300 and fast.quality.enabled
    paper = _cfg("quality=paper")
    assert paper.num_samples == 2048 and paper.quality.num_runs == 5
    assert paper.quality.discriminative_iterations == 2000 and paper.quality.context_fid_iterations is None
    assert paper.quality.reference_size is None
    mixed = _cfg("quality=paper", "num_samples=512", "quality.num_runs=2")
    assert mixed.num_samples == 512 and mixed.quality.num_runs == 2 and mixed.quality.discriminative_iterations == 2000
    assert _cfg("quality.enabled=false").quality.enabled is False
