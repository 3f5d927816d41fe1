"""Every registered model family through the model contract (tsdiff.sampling.contract): built from its
Hydra config, one training step, sampling through the shared DiffusionSampler, decoding, and the cache
interface. Table-driven: a new family gets every check by adding one row to FAMILIES (its config name,
tiny overrides, a batch and, for conditional models, a condition). Only public constructors/configs,
``denoise`` and the contract members are used, so the checks survive internal refactors."""

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from hydra import compose
from hydra.utils import instantiate

from tsdiff.caching import E2CRFCache, StepE2CRF
from tsdiff.sampling import DiffusionSampler
from tsdiff.sampling.cascade import CascadeSampler
from tsdiff.sampling.contract import Cascades, Codec, DeclaresCache, DiffusionModel, declares

from shared_fixtures import hydra_conf, one_thread  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread", "hydra_conf")
N, STEPS = 3, 4
TINY_SCORE = ["score_model.backbone.d_model=8", "score_model.backbone.num_layers=1"]
TINY_TIMEDIFF = ["model.hidden=8", "model.cond_hidden=8", "model.step_sinusoid_dim=8", "model.step_hidden_dim=8",
                 "model.ema_decay=null"]

TINY_DTS = ["model.net.d_model=8", "model.net.num_heads=2", "model.net.dim_feedforward=16", "model.net.n_encoder_layers=1",
            "model.net.n_decoder_layers=1", "model.net.step_sinusoid_dim=8", "model.schedule.num_timesteps=20", "model.ema_decay=null"]


@dataclass
class Family:
    """One model family: how to build it tiny, a training batch, and the sampling condition."""

    overrides: list[str]
    data: dict[str, int]  # the data facts the train task passes (datamodule.model_kwargs())
    batch: Callable[[Any, torch.Generator], Any]
    cond: Callable[[Any, torch.Generator], Any] = lambda model, gen: None
    token_blocks: bool = False  # whether the backbone declares token blocks (E2-CRF token path)
    extra: list[str] = field(default_factory=list)


def _series(model, gen):
    return torch.randn(4, *model.sample_shape, generator=gen)


def _forecast_batch(model, gen):
    horizon, channels = model.sample_shape
    return {"lookback": torch.randn(4, 16, channels, generator=gen), "future": torch.randn(4, horizon, channels, generator=gen)}


def _forecast_cond(model, gen):
    lookback = torch.randn(N, 16, model.sample_shape[1], generator=gen)
    return {"c": model.condition(lookback)}


SCORE_DATA = {"n_channels": 2, "max_len": 8}
FAMILIES = {
    "score-transformer-freq": Family(["score_model=default", "fourier_transform=true", *TINY_SCORE, "score_model.backbone.num_heads=2",
                                      "score_model.backbone.dim_feedforward=16"], SCORE_DATA, _series, token_blocks=True),
    "score-transformer-time": Family(["score_model=default", "fourier_transform=false", *TINY_SCORE, "score_model.backbone.num_heads=2",
                                      "score_model.backbone.dim_feedforward=16"], SCORE_DATA, _series, token_blocks=True),
    "score-lstm-freq": Family(["score_model=lstm", "fourier_transform=true", *TINY_SCORE], SCORE_DATA, _series),
    "score-lstm-time": Family(["score_model=lstm", "fourier_transform=false", *TINY_SCORE], SCORE_DATA, _series),
    "l2d-diff": Family(["model=l2d_diff", "model.latent_dim=4", "model.ae_hidden=8", "model.ae_depth=1", "model.decoder_hidden=8",
                         "model.latent_hidden=8", "model.latent_blocks=1", "model.cond_channels=4", "model.cond_hidden=8",
                         "model.data_hidden=8", "model.data_blocks=2"], SCORE_DATA, _series,
                        lambda model, gen: {"r": torch.randn(N, model.latent_dim, generator=gen)}),
    "diffusion_ts": Family(["model=diffusion_ts", *TINY_DTS], SCORE_DATA, _series),
    "kprotodiff": Family(["model=kprotodiff", *TINY_DTS, "model.prototypes.n_prototypes=2"], SCORE_DATA, _series),
    "timediff-ci": Family(["model=timediff_ci", *TINY_TIMEDIFF], {"lookback": 16, "horizon": 8, "n_channels": 2},
                          _forecast_batch, _forecast_cond),
}


def _build(name: str):
    fam = FAMILIES[name]
    cfg = compose(config_name="train", overrides=fam.overrides)
    torch.manual_seed(0)
    node = cfg.model if cfg.get("model") is not None else cfg.score_model
    return instantiate(node, **fam.data), fam


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # a training step outside a Trainer
@pytest.mark.parametrize("name", FAMILIES)
def test_family_satisfies_the_contract_train_sample_decode(name):
    model, fam = _build(name)
    assert isinstance(model, DiffusionModel)
    gen = torch.Generator().manual_seed(0)

    # one training step: a finite scalar loss with gradients on the parameters
    model.train()
    loss = model.training_step(fam.batch(model, gen), 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    # denoise keeps the shape; sampling through the shared sampler is seeded and decoded
    cond = fam.cond(model, gen)
    x = torch.randn(N, *model.sample_shape, generator=gen)
    with torch.no_grad():
        t = model.schedule.sample_times(STEPS)[1].reshape(1).expand(N)
        assert model.eval().denoise(x, t, cond).shape == x.shape
    sampler = DiffusionSampler(model, sample_batch_size=2, progress=False)
    a = sampler.sample(N, STEPS, cond=cond, seed=1)
    b = sampler.sample(N, STEPS, cond=cond, seed=1)
    assert a.shape == (N, *model.sample_shape) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    raw = sampler.sample(N, STEPS, cond=cond, seed=1, decode=False)
    if declares(model, Codec):  # decode(encode(x)) is the identity, and the sampler decodes
        torch.testing.assert_close(model.decode(model.encode(a)), a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.decode(raw), a, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(raw, a, rtol=0, atol=0)
    if declares(model, Cascades):  # a cascade ends in the model's own sample space, every stage a contract model
        stages = model.cascade_stages()
        assert stages and all(isinstance(s.model, DiffusionModel) for s in stages)
        cascade = CascadeSampler(stages, sample_batch_size=2, progress=False)
        c = cascade.sample(N, STEPS, seed=1)
        assert c.shape == (N, *model.sample_shape) and torch.isfinite(c).all()
        torch.testing.assert_close(cascade.sample(N, STEPS, seed=1), c, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_cache_interface_and_exact_cache(name):
    """What the family declares for caches, and a cache that recomputes everything reproduces uncached
    sampling on every family (token, step, network-output or whole-output path)."""
    model, fam = _build(name)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    cond = fam.cond(model, gen)
    iface = model.cache_interface() if declares(model, DeclaresCache) else None
    assert (iface is not None and iface.tokens is not None) == fam.token_blocks
    ref = DiffusionSampler(model, sample_batch_size=N, progress=False).sample(N, STEPS, cond=cond, seed=2)
    for policy in (E2CRFCache(R=1), StepE2CRF(R=1)):
        s = DiffusionSampler(model, sample_batch_size=N, progress=False, cache=policy)
        torch.testing.assert_close(s.sample(N, STEPS, cond=cond, seed=2), ref, rtol=1e-5, atol=1e-6)
        assert s.last_stats.cache["fraction_recomputed"] == 1.0 and not policy.holds_state
    if iface is not None:  # the model runs its network through a replacement without being modified
        x = torch.randn(N, *model.sample_shape, generator=gen)
        t = model.schedule.sample_times(STEPS)[1].reshape(1).expand(N)
        calls = []

        def wrapped(y, tt):
            calls.append(y.shape)
            return iface.network(y, tt)

        with torch.no_grad():
            torch.testing.assert_close(iface.denoise_with(x, t, cond, wrapped), model.denoise(x, t, cond), rtol=0, atol=0)
        assert calls == [x.shape]
