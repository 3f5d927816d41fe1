"""E2-CRF on patched transformers (tokens of several positions), forecast residuals, and probes seeded from
the sampler: exact at full recompute, no cross-sample leakage, real work reduction. Tiny random models."""

import functools

import pytest
import torch

from tsdiff.caching import E2CRFCache, TokenE2CRF
from tsdiff.caching.e2crf_base import E2CRFPolicy
from tsdiff.diffusion.schedules import VPSDE
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import TransformerScoreNet
from tsdiff.sampling import DiffusionSampler
from shared_fixtures import one_thread  # noqa: F401  (fixture)

L, C, STEPS, P = 22, 2, 12, 3  # 8 tokens of 3 positions (the last one padded)
LOOSE = {"tau_0": 0.5, "K": 1, "R": 5, "random_probe_ratio": 0.1, "tau_warn": 5.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (shared_fixtures)


def _model(patch=P, fourier=True, seed=0):
    torch.manual_seed(seed)
    backbone = functools.partial(TransformerScoreNet, d_model=16, num_layers=2, num_heads=2, dim_feedforward=32, patch_size=patch)
    m = ScoreModule(n_channels=C, max_len=L, backbone=backbone, noise_scheduler=VPSDE(), fourier_transform=fourier)
    with torch.no_grad():
        m.data_std.copy_(torch.linspace(0.5, 2.0, L)[:, None].expand(L, C))
    return m.eval()


def _sample(model, n, cache=None, batch=None, solver="auto", steps=STEPS, **kw):
    s = DiffusionSampler(model, sample_batch_size=batch or n, solver=solver, progress=False,
                         cache=E2CRFCache(**cache) if cache is not None else None)
    out = s.sample(n, steps, **kw)
    return out, s.last_stats.cache


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max()


def test_patched_network_declares_token_blocks():
    m = _model()
    assert m.cache_interface().tokens is m.score_network and m.score_network.num_tokens == 8


@pytest.mark.parametrize("kw", [{"R": 1, "mode": "token"}, {"tau_0": 0.0, "mode": "token"}, {"R": 1, "mode": "step"},
                                {"tau_0": 0.0, "mode": "token", "forecast": "linear"}, {"R": 1, "mode": "step", "forecast": "linear"}])
def test_patched_full_recompute_equals_uncached(kw):
    m = _model()
    ref, _ = _sample(m, 3, seed=0)
    out, stats = _sample(m, 3, kw, seed=0)
    assert stats["fraction_recomputed"] == 1.0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_patched_partial_forward_is_exact_when_inputs_did_not_change():
    m = _model()
    net = m.score_network
    cache = TokenE2CRF()
    cache.attach(net)
    y, t = torch.randn(3, L, C), torch.full((3,), 0.4)
    with torch.inference_mode():
        full = net(y, t)
        torch.testing.assert_close(cache.refresh(y, t), full, rtol=0, atol=0)
        sel = torch.zeros(3, net.num_tokens, dtype=torch.bool)
        sel[0, 1], sel[1, [0, 5]], sel[2, 7] = True, True, True
        out = cache.partial_forward(y, t, sel)
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,forecast", [("token", "hold"), ("token", "linear"), ("step", "linear")])
def test_patched_cache_reuses_work_and_stays_close(mode, forecast):
    m = _model()
    ref, _ = _sample(m, 4, seed=0)
    out, stats = _sample(m, 4, {**LOOSE, "mode": mode, "forecast": forecast}, seed=0)
    assert stats["partial_steps"] > 0 and stats["fraction_recomputed"] < 0.9
    assert stats["extra"]["path"] == mode and stats["extra"]["forecast"] == forecast
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.5


def test_patch_tokens_force_the_lowest_frequencies():
    m = _model()
    s = DiffusionSampler(m, sample_batch_size=2, progress=False)
    cache = TokenE2CRF(**{**LOOSE, "K": 2})
    cache.start(s.spec, STEPS, 2)
    try:
        # frequency_index(22): real parts of frequencies 0..11 at positions 0..11, imaginary parts of 1..10 at
        # 12..21; token 0 holds frequencies 0-2, token 4 (positions 12-14) the imaginary parts of 1-3
        assert cache.forced_mask(8, torch.device("cpu")).nonzero().flatten().tolist() == [0, 4]
    finally:
        cache.finish()


@pytest.mark.parametrize("mode,forecast", [("token", "hold"), ("token", "linear"), ("step", "linear")])
def test_no_cross_sample_leakage(mode, forecast):
    """Per-sample decisions and caches: a sample's result is the same alone and in a batch, and swapping
    batch order swaps the outputs (deterministic solver; each run is one chunk with the same seed)."""
    m = _model()
    x_T = torch.randn(3, L, C, generator=torch.Generator().manual_seed(5))
    kw = {**LOOSE, "mode": mode, "forecast": forecast}
    together, stats = _sample(m, 3, kw, solver="dpm_solver++", x_T=x_T, seed=0)
    assert stats["partial_steps"] > 0
    for i in range(3):
        alone, _ = _sample(m, 1, kw, solver="dpm_solver++", x_T=x_T[i : i + 1], seed=0)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-4)
    swapped, _ = _sample(m, 3, kw, solver="dpm_solver++", x_T=x_T.flip(0), seed=0)
    torch.testing.assert_close(swapped.flip(0), together, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["token", "step"])
def test_linear_forecast_changes_reuse_only(mode):
    """The forecast acts on reused residuals only: same schedule of full steps, different (not wild) output."""
    m = _model()
    hold, sh = _sample(m, 4, {**LOOSE, "mode": mode, "batch_sync": True}, solver="ddim", seed=0)
    lin, sl = _sample(m, 4, {**LOOSE, "mode": mode, "batch_sync": True, "forecast": "linear"}, solver="ddim", seed=0)
    assert sh["full_steps"] >= 3 and sl["partial_steps"] > 0
    assert not torch.allclose(hold, lin) and _rel(lin, hold) < 0.5


def test_forecast_ratio_is_clipped_and_zero_without_history():
    r = E2CRFPolicy.forecast_ratio(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([0.6, 0.6, 0.6]), torch.tensor([0.7, float("nan"), 0.7]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, 2.0]))
    d, d_prev = torch.ones(3, 2), torch.zeros(3, 2)
    out = E2CRFPolicy.extrapolate(d, d_prev, torch.tensor([0.5, 0.5, 0.1]), torch.tensor([0.6] * 3), torch.tensor([0.7, float("nan"), 0.7]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0], [1.0, 1.0], [3.0, 3.0]]))


def test_bad_forecast_is_a_clear_error():
    with pytest.raises(ValueError, match="forecast"):
        E2CRFCache(forecast="cubic")


def test_probes_follow_the_sampler_seed_per_chunk():
    """Random probes come from the sampler's seed: chunks draw different probes, the same seed repeats
    them (they were re-seeded to the same value in every chunk before)."""
    m = _model()
    kw = {**LOOSE, "mode": "token", "tau_0": 50.0, "K": 0, "random_probe_ratio": 0.25}
    seen = []
    orig = TokenE2CRF._select

    def spy(self, y, h0):
        sel, full, g = orig(self, y, h0)
        seen.append(sel[0].nonzero().flatten().tolist())
        return sel, full, g

    TokenE2CRF._select = spy
    try:
        _sample(m, 2, kw, batch=1, steps=4, seed=0)  # two chunks, 2 partial steps each
        first = list(seen)
        seen.clear()
        _sample(m, 2, kw, batch=1, steps=4, seed=0)
    finally:
        TokenE2CRF._select = orig
    assert seen == first and first[:2] != first[2:]


def test_partial_forward_of_one_sample_ignores_the_others():
    """Direct leakage check on the flat-index bookkeeping: changing sample 1's input (and its selection)
    leaves sample 0's partial forward unchanged (up to float summation order)."""
    m = _model()
    net = m.score_network
    y, t = torch.randn(2, L, C, generator=torch.Generator().manual_seed(3)), torch.full((2,), 0.4)
    sel = torch.zeros(2, net.num_tokens, dtype=torch.bool)
    sel[0, [1, 2]] = True
    outs = []
    with torch.inference_mode():
        for other, n_other in ((y[1], 1), (5.0 * torch.randn(L, C), 6)):
            cache = TokenE2CRF()
            cache.attach(net)
            cache.refresh(y, t)
            s = sel.clone()
            s[1, :n_other] = True
            y2 = y.clone()
            y2[0] += 0.1
            y2[1] = other
            outs.append(cache.partial_forward(y2, t, s)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_tau_0_auto_is_lower_under_deterministic_solvers():
    """The sampler tells the cache its solver; ``auto`` picks the threshold measured to beat fewer steps."""
    from tsdiff.caching.pricing import TAU_0_DETERMINISTIC, TAU_0_FREQUENCY, TAU_0_TIME

    for fourier, solver, expected in ((True, "euler_maruyama", TAU_0_FREQUENCY), (True, "dpm_solver++", TAU_0_DETERMINISTIC),
                                      (True, "ddim", TAU_0_DETERMINISTIC), (False, "dpm_solver++", TAU_0_TIME)):
        _, stats = _sample(_model(fourier=fourier), 2, {}, solver=solver, steps=4, seed=0)
        assert stats["extra"]["tau_0"] == expected, (fourier, solver)
    assert E2CRFCache(tau_0=0.3).step.tau_0 == 0.3
