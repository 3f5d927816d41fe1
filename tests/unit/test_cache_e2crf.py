"""E2-CRF cache: exactness when everything is recomputed, no cross-sample leakage, state reset, real
token-level work reduction, parameter validation. Tiny random-weight models; no timing assertions."""

import functools

import pytest
import torch

from tsdiff.caching import make_cache_policy
from tsdiff.caching import E2CRFCache, TokenE2CRF
from tsdiff.caching.pricing import ReusePricer
from tsdiff.diffusion.schedules import VPSDE
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import LSTMScoreNet, TransformerScoreNet
from tsdiff.sampling import DiffusionSampler
from tsdiff.sampling.denoiser import as_diffusion_model
from shared_fixtures import one_thread  # noqa: F401  (fixture)

L, C, STEPS = 16, 2, 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (shared_fixtures)


def _model(lstm=False, fourier=True, length=L, seed=0):
    torch.manual_seed(seed)
    if lstm:
        backbone = functools.partial(LSTMScoreNet, d_model=8, num_layers=1)
    else:
        backbone = functools.partial(TransformerScoreNet, d_model=16, num_layers=2, num_heads=2, dim_feedforward=32)
    m = ScoreModule(n_channels=C, max_len=length, backbone=backbone, noise_scheduler=VPSDE(), fourier_transform=fourier)
    with torch.no_grad():  # give the data std some spread so preconditioning is not trivial
        m.data_std.copy_(torch.linspace(0.5, 2.0, length)[:, None].expand(length, C))
    return m.eval()


def _sample(model, n, cache_kwargs=None, batch=None, solver="auto", steps=STEPS, **kw):
    s = DiffusionSampler(model, sample_batch_size=batch or n, solver=solver, progress=False,
                         use_cache=cache_kwargs is not None, cache_kwargs=cache_kwargs)
    out = s.sample(n, steps, **kw)
    return out, s.last_stats.cache


# a setting that makes the cache reuse a lot on these tiny models (so the tests are not vacuous)
LOOSE = {"tau_0": 0.5, "K": 1, "R": 5, "random_probe_ratio": 0.1, "tau_warn": 5.0}


@pytest.mark.parametrize("kw", [{"R": 1, "mode": "token"}, {"R": 1, "mode": "step"}, {"tau_0": 0.0, "mode": "token"}, {"R": 1}])
def test_recompute_everything_equals_uncached(kw):
    m = _model()
    ref, _ = _sample(m, 3, seed=0)
    out, stats = _sample(m, 3, kw, seed=0)
    assert stats["fraction_recomputed"] == 1.0 and stats["full_steps"] == STEPS
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_recompute_everything_equals_uncached_for_lstm():
    m = _model(lstm=True, fourier=False)
    ref, _ = _sample(m, 3, seed=0)
    out, stats = _sample(m, 3, {"R": 1}, seed=0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert stats["extra"]["path"] == "network-output"


@pytest.mark.parametrize("mode", ["token", "step"])
def test_cache_reuses_work_and_stays_close(mode):
    m = _model()
    ref, _ = _sample(m, 4, seed=0)
    out, stats = _sample(m, 4, {**LOOSE, "mode": mode}, seed=0)
    assert stats["partial_steps"] > 0 and stats["fraction_recomputed"] < 0.9
    assert stats["effective_network_calls"] < stats["network_calls"] == STEPS
    assert stats["cache_bytes"] > 0 and stats["extra"]["path"] == mode
    assert torch.isfinite(out).all()
    # an approximation, but not an unrelated sample
    rel = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert rel.max() < 0.5


@pytest.mark.parametrize("mode", ["token", "step"])
def test_sample_alone_equals_sample_in_batch(mode):
    """Per-sample decisions: a sample's result does not depend on its batch neighbours (deterministic
    probability-flow solver so that the only randomness is x_T)."""
    m = _model()
    x_T = torch.randn(3, L, C, generator=torch.Generator().manual_seed(5))
    kw = {**LOOSE, "mode": mode}
    together, stats = _sample(m, 3, kw, solver="pf_ode", x_T=x_T, seed=0)
    assert stats["partial_steps"] > 0
    for i in range(3):
        alone, _ = _sample(m, 1, kw, solver="pf_ode", x_T=x_T[i : i + 1], seed=0)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-4)


def test_batch_elements_do_not_share_caches():
    """Two different inputs in one batch must not see each other's keys (the reference broadcasts
    sample 0's cache): swapping their order swaps the outputs."""
    m = _model()
    x_T = torch.randn(2, L, C, generator=torch.Generator().manual_seed(1))
    kw = {**LOOSE, "mode": "token"}
    a, _ = _sample(m, 2, kw, solver="pf_ode", x_T=x_T, seed=0)
    b, _ = _sample(m, 2, kw, solver="pf_ode", x_T=x_T.flip(0), seed=0)
    torch.testing.assert_close(a, b.flip(0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a[0], a[1])


def test_state_is_reset_between_calls_and_freed():
    m = _model()
    plain_before, _ = _sample(m, 2, seed=1)
    s = DiffusionSampler(m, sample_batch_size=2, progress=False, use_cache=True, cache_kwargs={**LOOSE, "mode": "token"})
    a = s.sample(4, STEPS, seed=3)  # two chunks
    stats_a = s.last_stats.cache
    assert not s.cache.holds_state
    torch.testing.assert_close(_sample(m, 2, seed=1)[0], plain_before, rtol=0, atol=0)  # the model is left as it was
    b = s.sample(4, STEPS, seed=3)
    torch.testing.assert_close(a, b)
    assert s.last_stats.cache["tokens_recomputed"] == stats_a["tokens_recomputed"]
    assert stats_a["network_calls"] == 2 * STEPS  # stats summed over both chunks


def test_state_freed_and_model_untouched_even_when_sampling_fails():
    m = _model()
    ref, _ = _sample(m, 2, seed=0)
    s = DiffusionSampler(m, sample_batch_size=2, progress=False, use_cache=True, cache_kwargs={"mode": "token"})
    net = m.cache_interface().tokens

    def broken(h):
        raise RuntimeError("boom")

    net.readout = broken
    with pytest.raises(RuntimeError, match="boom"):
        s.sample(2, STEPS, seed=0)
    assert not s.cache.holds_state
    del net.readout  # back to the class's readout
    torch.testing.assert_close(_sample(m, 2, seed=0)[0], ref, rtol=0, atol=0)


def test_partial_step_computes_only_selected_tokens():
    """The feed-forward of every layer sees only the gathered tokens on partial steps."""
    m = _model()
    seen = []
    handles = [layer.ff1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
               for layer in m.score_network.layers]
    try:
        _, stats = _sample(m, 4, {**LOOSE, "mode": "token"}, seed=0)
    finally:
        for h in handles:
            h.remove()
    assert min(seen) < L and max(seen) == L
    n_layers = len(m.score_network.layers)
    assert stats["tokens_recomputed"] < stats["tokens_total"] == STEPS * 4 * L * n_layers


def test_partial_forward_is_exact_when_inputs_did_not_change():
    """With unchanged inputs the cached keys and residuals are exact, so any selection reproduces the
    full forward (checks the gather / attend-to-all-keys / scatter bookkeeping)."""
    m = _model()
    net = m.cache_interface().tokens
    cache = TokenE2CRF()
    cache.attach(net)
    y = torch.randn(3, L, C)
    t = torch.full((3,), 0.4)
    with torch.inference_mode():
        full = net(y, t)
        torch.testing.assert_close(cache.refresh(y, t), full, rtol=0, atol=0)
        sel = torch.rand(3, L, generator=torch.Generator().manual_seed(0)) < 0.3
        sel[:, 0] = True
        out = cache.partial_forward(y, t, sel)
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)


def test_time_domain_has_no_forced_low_frequency_tokens():
    m = _model(fourier=False)
    _, stats = _sample(m, 2, {**LOOSE, "mode": "token", "K": 4}, seed=0)
    assert stats["extra"]["K_effective"] == 0


def test_frequency_domain_forces_the_lowest_frequencies():
    m = _model()
    cache = TokenE2CRF(K=3)
    cache.start(as_diffusion_model(m), STEPS, 2)
    forced = cache.forced_mask(L, torch.device("cpu"))
    # DC real, frequency-1 real (position 1) and frequency-1 imaginary (first imaginary slot, L//2 + 1)
    assert forced.nonzero().flatten().tolist() == [0, 1, L // 2 + 1]


def test_ablation_variants_run_and_spend_their_budget():
    m = _model()
    _, rnd = _sample(m, 2, {"mode": "token", "selection": "random", "budget": 0.25, "R": 4}, seed=0)
    assert 0.25 <= rnd["fraction_recomputed"] < 0.6
    _, fixed = _sample(m, 2, {"selection": "fixed", "R": 4}, seed=0)
    assert fixed["full_steps"] == 4 and fixed["fraction_recomputed"] == pytest.approx(4 / STEPS)
    for flag in ("event_trigger", "error_feedback", "energy_weighting"):
        out, st = _sample(m, 2, {**LOOSE, flag: False}, seed=0)
        assert torch.isfinite(out).all() and st["network_calls"] == STEPS


def test_lstm_gets_step_reuse_and_token_mode_is_refused():
    m = _model(lstm=True, fourier=False)
    _, stats = _sample(m, 2, {**LOOSE}, seed=0)
    assert stats["extra"]["path"] == "network-output" and stats["partial_steps"] > 0
    with pytest.raises(ValueError, match="transformer"):
        _sample(m, 2, {"mode": "token"}, seed=0)


def test_plain_denoiser_gets_output_reuse():
    m = _model()
    s = DiffusionSampler(denoiser=lambda x, t, c: m.denoise(x, t, c), schedule=m.schedule, parameterization=m.parameterization,
                         sample_shape=m.sample_shape, progress=False, use_cache=True, cache_kwargs=LOOSE)
    out = s.sample(2, STEPS, seed=0)
    assert torch.isfinite(out).all() and s.last_stats.cache["extra"]["path"] == "output"


def test_batch_sync_makes_whole_batch_decisions():
    m = _model()
    _, stats = _sample(m, 4, {**LOOSE, "mode": "step", "batch_sync": True}, seed=0)
    # every evaluation is either full for all samples or reused for all
    assert stats["tokens_recomputed"] % (4 * L * 2) == 0 and stats["partial_steps"] > 0


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"K": -1}, "K"), ({"tau_0": -0.1}, "tau_0"), ({"R": 0}, "R"), ({"tau_warn": 0}, "tau_warn"),
        ({"random_probe_ratio": 1.5}, "random_probe_ratio"), ({"mode": "fast"}, "mode"), ({"R": 2.5}, "R"),
        ({"selection": "random"}, "budget"), ({"budget": 0.2}, "budget"), ({"tau_0": float("nan")}, "tau_0"),
        ({"event_trigger": "yes"}, "event_trigger"),
    ],
)
def test_bad_parameters_get_clear_errors(kw, word):
    with pytest.raises(ValueError, match=word):
        make_cache_policy(True, kw)
    with pytest.raises(TypeError):
        E2CRFCache(unknown_option=1)


def test_output_sensitivity_is_small_at_both_ends_and_peaks_at_the_data_scale():
    """omega = s d / (s^2 + d^2) for the preconditioned x0 network: at most 1/2, reached where the
    noise-to-signal ratio s equals the component's data std d."""
    m = _model()
    t = torch.tensor([m.schedule.t_min, 0.5, 1.0])
    omega = m.output_sensitivity(t)
    assert omega.shape == (3, L, C) and (omega >= 0).all() and (omega <= 0.5 + 1e-6).all()
    assert omega[0].max() < 0.01 and omega[2].max() < 0.1 < omega[1].max()
    alpha, sigma = m.schedule.alpha_sigma(t[1:2])
    s = float(sigma / alpha)
    d = m.data_std.clone()
    with torch.no_grad():
        m.data_std.fill_(s)  # every component exactly at its peak
    torch.testing.assert_close(m.output_sensitivity(t[1:2]), torch.full((1, L, C), 0.5))
    with torch.no_grad():
        m.data_std.copy_(d)
    m.parameterization = "eps"
    eps_omega = m.output_sensitivity(t)
    assert (eps_omega[2] > eps_omega[0]).all()  # an eps error matters most at high noise


def test_energetic_tokens_get_lower_thresholds():
    m = _model()  # data std grows along the sequence

    def pricer(energy_weighting):
        return ReusePricer(schedule=m.schedule, parameterization="x0", output_sensitivity=m.output_sensitivity,
                           data_std=m.data_std, per_sample=False, energy_weighting=energy_weighting)

    w = pricer(True).energy_weights(torch.randn(2, L, C))
    assert w.shape == (1, L) and torch.all(w[0, 1:] <= w[0, :-1]) and w[0, 0] > 1 > w[0, -1]
    assert torch.all(pricer(False).energy_weights(torch.randn(2, L, C)) == 1)


def test_larger_tau_0_means_more_reuse():
    m = _model()
    fractions = [_sample(m, 2, {**LOOSE, "mode": mode, "tau_0": tau}, seed=0)[1]["fraction_recomputed"]
                 for mode in ("step", "token") for tau in (0.001, 0.5)]
    assert fractions[0] > fractions[1] and fractions[2] > fractions[3]


def test_stats_of_chunks_are_merged_not_overwritten():
    from tsdiff.caching.base import CacheStats

    a = CacheStats(network_calls=10, extra={"K_effective": 5, "sample_full_recomputes": 2, "mean_kappa": 0.5, "path": "step"})
    b = CacheStats(network_calls=30, extra={"K_effective": 5, "sample_full_recomputes": 3, "mean_kappa": 1.0, "path": "step"})
    extra = a.merge(b).extra
    assert extra == {"K_effective": 5, "sample_full_recomputes": 5, "mean_kappa": 0.875, "path": "step"}


def test_time_domain_models_get_the_tau_0_advice_once(caplog, monkeypatch):
    import tsdiff.caching.pricing as pricing

    monkeypatch.setattr(pricing, "_TIME_DOMAIN_WARNED", False)
    m = _model(fourier=False)
    with caplog.at_level("WARNING", logger="tsdiff.caching.pricing"):
        _sample(m, 2, {"tau_0": 0.1}, seed=0)
        _sample(m, 2, {"tau_0": 0.1}, seed=0)
    assert sum("time-domain model" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    monkeypatch.setattr(pricing, "_TIME_DOMAIN_WARNED", False)
    with caplog.at_level("WARNING", logger="tsdiff.caching.pricing"):
        _sample(_model(), 2, {"tau_0": 0.1}, seed=0)  # frequency domain: no advice
    assert not caplog.records


def test_tau_0_auto_adapts_to_the_model_domain():
    from tsdiff.caching.pricing import TAU_0_FREQUENCY, TAU_0_TIME, resolve_tau_0

    assert (resolve_tau_0("auto", True), resolve_tau_0(None, False), resolve_tau_0("auto", None)) == (TAU_0_FREQUENCY, TAU_0_TIME, TAU_0_FREQUENCY)
    assert resolve_tau_0(0.3, False) == 0.3  # a number the user gave is kept
    with pytest.raises(ValueError, match="tau_0"):
        resolve_tau_0("fast", True)
    for fourier, expected in ((True, TAU_0_FREQUENCY), (False, TAU_0_TIME)):
        sampler = DiffusionSampler(_model(fourier=fourier), sample_batch_size=2, cache=E2CRFCache(), progress=False)
        _, stats = sampler.sample(2, STEPS, seed=0, return_stats=True)
        assert stats.cache["extra"]["tau_0"] == expected
