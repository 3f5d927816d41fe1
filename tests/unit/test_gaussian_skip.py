"""The full-covariance Gaussian skip (``ScoreModule(skip="gaussian")``): the closed form it claims, its
degenerate-data behaviour, checkpoints, and that a zero network samples the fitted Gaussian."""

from functools import partial

import numpy as np
import pytest
import torch

from tsdiff.data import make_beats
from tsdiff.diffusion import VPSDE
from tsdiff.diffusion.gaussian_skip import MAX_DIM, GaussianSkip
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import TransformerScoreNet
from tsdiff.sampling import DiffusionSampler

NET = partial(TransformerScoreNet, d_model=16, num_layers=1, num_heads=2, dim_feedforward=32)


def _correlated(n=400, length=6, channels=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((length * channels, length * channels)) / 3
    x = rng.standard_normal((n, length * channels)) @ mix + np.linspace(-1, 1, length * channels)
    return x.reshape(n, length, channels).astype(np.float32)


def _model(x: np.ndarray, fourier=False, **kw) -> ScoreModule:
    torch.manual_seed(0)
    m = ScoreModule(n_channels=x.shape[2], max_len=x.shape[1], backbone=NET, noise_scheduler=VPSDE(),
                    fourier_transform=fourier, skip="gaussian", **kw)
    m.fit_data_std(torch.from_numpy(x))
    return m


def _zero_net(y, t):
    return torch.zeros_like(y)


@pytest.mark.parametrize("fourier", [False, True])
def test_zero_network_gives_the_gaussian_posterior_mean_and_std(fourier):
    x = _correlated()
    m = _model(x, fourier)
    z = m.encode(torch.from_numpy(x)).double().reshape(len(x), -1)
    mean, cov = z.mean(0), torch.cov(z.T)
    t = torch.tensor([0.05, 0.3, 0.9])
    alpha, sigma = m.schedule.alpha_sigma(t)
    xt = torch.randn(3, *m.sample_shape, generator=torch.Generator().manual_seed(1))
    got = m.denoise(xt, t, network=_zero_net).double().reshape(3, -1)
    _, _, c_out, _ = m.preconditioning(t, 3)
    for i in range(3):
        s2 = float(sigma[i] / alpha[i]) ** 2
        gain = cov @ torch.linalg.inv(cov + s2 * torch.eye(len(cov), dtype=cov.dtype))
        xi = xt[i].double().reshape(-1) / float(alpha[i])
        torch.testing.assert_close(got[i], mean + gain @ (xi - mean), rtol=1e-4, atol=1e-4)
        post_var = torch.diagonal(cov - gain @ cov)
        torch.testing.assert_close(c_out[i].double().reshape(-1) ** 2, post_var, rtol=1e-3, atol=1e-5)


def test_zero_network_samples_the_fitted_gaussian():
    x = _correlated(n=2000)
    m = _model(x)
    m.net = type("Zero", (torch.nn.Module,), {"forward": lambda self, y, t: torch.zeros_like(y)})()
    sampler = DiffusionSampler(m, solver="euler_maruyama", num_diffusion_steps=200)
    samples = sampler.sample(1500, generator=torch.Generator().manual_seed(0)).reshape(1500, -1).double()
    target = torch.cov(torch.from_numpy(x).reshape(len(x), -1).double().T)
    rel = torch.linalg.norm(torch.cov(samples.T) - target) / torch.linalg.norm(target)
    assert rel < 0.15, float(rel)  # a diagonal skip would miss every off-diagonal term (rel 0.72 here, measured)
    torch.testing.assert_close(samples.mean(0), torch.from_numpy(x).reshape(len(x), -1).double().mean(0),
                               atol=0.15, rtol=0)


def test_gaussian_skip_stays_finite_on_zero_padded_beats_and_constant_channels():
    beats, _ = make_beats(32, length=48, seed=0)
    beats[:, 30:] = 0.0
    two = np.concatenate([beats, np.full_like(beats, 2.5)], axis=2)  # 64 windows < 96 dims: rank deficient
    for fourier in (False, True):
        m = _model(two, fourier)
        assert float(m.gaussian_skip.eigvals.min()) > 0
        with torch.no_grad():
            loss = float(m.diffusion_loss(torch.from_numpy(two), generator=torch.Generator().manual_seed(0)))
        assert np.isfinite(loss) and loss < 5.0, loss  # unit-variance targets for an untrained F


def test_checkpoint_round_trip_keeps_the_fitted_covariance(tmp_path):
    x = _correlated()
    m = _model(x)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    fresh = ScoreModule(n_channels=2, max_len=6, backbone=NET, noise_scheduler=VPSDE(), fourier_transform=False,
                        skip="gaussian")
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    t = torch.tensor([0.4])
    xt = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh.denoise(xt, t), m.denoise(xt, t))


def test_bad_skip_settings_name_the_fix():
    with pytest.raises(ValueError, match="diagonal"):
        ScoreModule(n_channels=2, max_len=6, backbone=NET, noise_scheduler=VPSDE(), skip="full")
    with pytest.raises(ValueError, match="center"):
        ScoreModule(n_channels=2, max_len=6, backbone=NET, noise_scheduler=VPSDE(), skip="gaussian", center=False)
    with pytest.raises(ValueError, match="skip=diagonal"):
        GaussianSkip(MAX_DIM + 1, 1)


@pytest.mark.parametrize("mode", ["token", "step"])
def test_e2crf_prices_the_gaussian_skip_and_matches_uncached_at_full_recompute(mode):
    x = _correlated(length=8)
    m = _model(x, fourier=True)
    omega = m.output_sensitivity(torch.tensor([0.05, 0.5]))
    assert omega.shape == (2, 8, 2) and torch.isfinite(omega).all() and float(omega.min()) >= 0

    def run(cache_kwargs):
        s = DiffusionSampler(m, sample_batch_size=3, progress=False, use_cache=cache_kwargs is not None,
                             cache_kwargs=cache_kwargs)
        return s.sample(3, 8, seed=0)

    torch.testing.assert_close(run({"R": 1, "mode": mode}), run(None), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(run({"tau_0": 0.5, "R": 4, "mode": mode})).all()


def test_auto_skip_is_gaussian_where_it_applies_and_diagonal_with_a_warning_elsewhere():
    small = ScoreModule(n_channels=2, max_len=6, backbone=NET, noise_scheduler=VPSDE(), skip="auto")
    assert small.skip == "gaussian" and small.gaussian_skip is not None
    with pytest.warns(UserWarning, match="limit"):
        big = ScoreModule(n_channels=MAX_DIM // 8 + 1, max_len=8, backbone=NET, noise_scheduler=VPSDE(), skip="auto")
    assert big.skip == "diagonal" and big.gaussian_skip is None
    with pytest.warns(UserWarning, match="parameterization"):
        eps = ScoreModule(n_channels=2, max_len=6, backbone=NET, noise_scheduler=VPSDE(), skip="auto", parameterization="eps")
    assert eps.gaussian_skip is None


def test_the_models_default_steps_is_what_a_sampler_takes_when_given_none():
    x = _correlated(n=50)
    m = _model(x, default_steps=7)
    sampler = DiffusionSampler(m, progress=False)
    assert sampler.num_diffusion_steps == 7
    _, stats = sampler.sample(3, seed=0, return_stats=True)
    assert stats.num_steps == 7 and stats.network_evaluations == 7 * 1
    assert DiffusionSampler(m, num_diffusion_steps=4, progress=False).sample(3, seed=0, return_stats=True)[1].num_steps == 4
    with pytest.raises(ValueError, match="default_steps must be a positive integer"):
        _model(x, default_steps=0)
