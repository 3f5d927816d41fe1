import math

import numpy as np
import pytest
import torch

from tsdiff.diffusion import VESDE, VPSDE, CosineSchedule, DiscreteSchedule, LinearSchedule

ALL = [LinearSchedule(1000), CosineSchedule(100, beta_start=1e-4, beta_end=0.1), VPSDE(), VESDE()]


def test_discrete_alpha_bar_is_cumprod_of_one_minus_beta():
    sch = LinearSchedule(50, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 50)
    a, s = sch.alpha_sigma(torch.arange(50))
    np.testing.assert_allclose(a.numpy() ** 2, np.cumprod(1 - betas), rtol=1e-6)
    np.testing.assert_allclose(a.numpy() ** 2 + s.numpy() ** 2, 1.0, rtol=1e-6)


def test_cosine_betas_are_clipped_into_the_requested_range():
    sch = CosineSchedule(100, beta_start=1e-4, beta_end=0.1)
    assert float(sch.betas.min()) >= 1e-4 - 1e-12 and float(sch.betas.max()) <= 0.1 + 1e-7
    assert np.all(np.diff(sch.alphas_cumprod.numpy()) < 0)


def test_vpsde_marginals_match_closed_form_and_preserve_variance():
    sde = VPSDE(0.1, 20.0)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    a, s = sde.alpha_sigma(t)
    expected = torch.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(a**2 + s**2, torch.ones(3, dtype=torch.float64))


def test_vesde_sigma_is_geometric_and_prior_is_sigma_max():
    sde = VESDE(0.01, 2.0)
    _, s = sde.alpha_sigma(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(s, torch.tensor([0.01, math.sqrt(0.02), 2.0], dtype=torch.float64))
    assert sde.prior_std() == 2.0


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()])
def test_sde_diffusion_matches_derivative_of_marginal_variance(sde):
    # For a linear SDE, d(sigma^2)/dt = 2 f sigma^2 + g^2 (moment equation, Sarkka & Solin eq. 5.51).
    t = torch.tensor(0.4, dtype=torch.float64)
    h = 1e-5
    _, s_hi = sde.alpha_sigma(t + h)
    _, s_lo = sde.alpha_sigma(t - h)
    _, s = sde.alpha_sigma(t)
    dvar = (s_hi**2 - s_lo**2) / (2 * h)
    f, g = sde.sde(t)
    assert float(dvar) == pytest.approx(float(2 * f * s**2 + g**2), rel=1e-5)


@pytest.mark.parametrize("sch", ALL, ids=repr)
def test_q_sample_has_the_marginal_mean_and_std(sch):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 1.5)
    t_val = 30 if sch.kind == "discrete" else 0.3
    t = torch.full((20000,), t_val, dtype=torch.long if sch.kind == "discrete" else torch.float32)
    xt = sch.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    a, s = sch.alpha_sigma64(t_val)
    assert float(xt.mean()) == pytest.approx(1.5 * a, abs=0.03)
    assert float(xt.std()) == pytest.approx(s, rel=0.03)


@pytest.mark.parametrize("sch", ALL, ids=repr)
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_sample_times_are_strictly_decreasing(sch, spacing):
    times = sch.sample_times(20, spacing=spacing)
    assert len(times) == 20
    assert torch.all(times[1:] < times[:-1])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_step_counts_are_rejected(bad):
    with pytest.raises(ValueError, match="positive integer"):
        VPSDE().sample_times(bad)


def test_more_steps_than_trained_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the model's 100 training steps"):
        CosineSchedule(100).sample_times(101)


def test_invalid_schedule_parameters():
    with pytest.raises(ValueError):
        VPSDE(beta_min=5, beta_max=1)
    with pytest.raises(ValueError):
        VESDE(sigma_min=0)
    with pytest.raises(ValueError):
        DiscreteSchedule([0.5, 1.2])
