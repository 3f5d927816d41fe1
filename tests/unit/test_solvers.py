"""Solvers driven by the exact denoiser of Gaussian data: the samples must have the data's law."""

import pytest
import torch

from tsdiff.diffusion import VESDE, VPSDE, CosineSchedule, LinearSchedule
from tsdiff.sampling import DiffusionSampler, PredictionModel, as_diffusion_model, euler_maruyama

from gaussian import GaussianDenoiser

MU, S = 0.7, 0.5
N, D = 4000, 4

# (schedule, solver, steps, solver_kwargs). The start x_T is drawn from the exact marginal q(x_T), so the
# test isolates the solver from prior mismatch (with VE sigma_max=2 or TimeDiff's clipped cosine schedule
# the N(0, prior_std^2) prior is itself not the marginal of non-centred data at t=T).
CASES = [
    (LinearSchedule(1000), "ddpm", 1000, {}),
    (LinearSchedule(1000), "ddim", 100, {"eta": 0.0}),
    (LinearSchedule(1000), "ddim", 200, {"eta": 1.0}),
    (LinearSchedule(1000), "dpm_solver++", 20, {"order": 2}),
    (LinearSchedule(1000), "dpm_solver++", 100, {"order": 1}),
    (CosineSchedule(100, beta_start=1e-4, beta_end=0.1), "ddpm", 100, {}),
    (CosineSchedule(100, beta_start=1e-4, beta_end=0.1), "dpm_solver++", 15, {}),
    (VPSDE(), "euler_maruyama", 500, {}),
    (VPSDE(), "pf_ode", 200, {"order": 1}),
    (VPSDE(), "pf_ode", 40, {"order": 2}),
    (VPSDE(), "ddpm", 200, {}),
    (VPSDE(), "dpm_solver++", 20, {}),
    (VESDE(0.01, 50.0), "euler_maruyama", 500, {}),
    (VESDE(0.01, 50.0), "pf_ode", 40, {"order": 2}),
    (VESDE(0.01, 50.0), "dpm_solver++", 20, {}),
    (VESDE(0.01, 50.0), "ddim", 100, {}),
    (VESDE(0.01, 2.0), "euler_maruyama", 500, {}),
    (VESDE(0.01, 2.0), "dpm_solver++", 20, {}),
]


def exact_start(schedule, n=N, d=D, seed=0):
    """x_T ~ q(x_T) = N(alpha_T mu, alpha_T^2 s^2 + sigma_T^2) at the first evaluation time."""
    a, s = schedule.alpha_sigma64(schedule.sample_times(2)[0])
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return a * MU + (a**2 * S**2 + s**2) ** 0.5 * z


@pytest.mark.parametrize("schedule,solver,steps,kw", CASES, ids=lambda v: repr(v) if not isinstance(v, dict) else str(v))
@pytest.mark.parametrize("param", ["x0", "eps"])
def test_solver_recovers_gaussian_data(schedule, solver, steps, kw, param):
    den = GaussianDenoiser(schedule, MU, S, param)
    sampler = DiffusionSampler(
        denoiser=den, schedule=schedule, parameterization=param, sample_shape=(D,), solver=solver,
        solver_kwargs=kw, sample_batch_size=N, progress=False,
    )
    x, stats = sampler.sample(N, steps, seed=0, x_T=exact_start(schedule), return_stats=True)
    # standard errors: mean 0.5/sqrt(16000) = 0.004, std ~ 0.003
    assert float(x.mean()) == pytest.approx(MU, abs=0.025)
    assert float(x.std()) == pytest.approx(S, abs=0.025)
    per_eval = 2 if kw.get("order") == 2 and solver == "pf_ode" else 1
    assert stats.network_evaluations == den.calls
    assert den.calls <= per_eval * steps and den.calls >= steps


def test_score_parameterization_works_for_sde_solvers():
    sde = VPSDE()
    den = GaussianDenoiser(sde, MU, S, "score")
    s = DiffusionSampler(denoiser=den, schedule=sde, parameterization="score", sample_shape=(D,),
                         solver="euler_maruyama", sample_batch_size=N, progress=False)
    x = s.sample(N, 500, seed=1, x_T=exact_start(sde))
    assert float(x.mean()) == pytest.approx(MU, abs=0.025)
    assert float(x.std()) == pytest.approx(S, abs=0.025)


@pytest.mark.parametrize("schedule", [LinearSchedule(1000), VPSDE()], ids=repr)
def test_dpm_solver_20_steps_is_as_close_as_ddpm_1000_steps(schedule):
    """Per-sample error of deterministic DPM-Solver++ (20 NFE) against the exact ODE map vs. the
    distribution error of 1000-step ancestral sampling: 20 steps must be at least as accurate."""
    den = GaussianDenoiser(schedule, MU, S)
    times = schedule.sample_times(20)
    x_T = torch.randn(N, D, generator=torch.Generator().manual_seed(3)) * schedule.prior_std()
    common = dict(denoiser=den, schedule=schedule, parameterization="x0", sample_shape=(D,), sample_batch_size=N, progress=False)
    dpm = DiffusionSampler(solver="dpm_solver++", **common).sample(N, 20, x_T=x_T.clone())
    exact = den.exact_ode_map(x_T.double(), times[0]).float()
    per_sample_err = float((dpm - exact).abs().mean())
    assert per_sample_err < 0.01 and float((dpm - exact).abs().max()) < 0.05
    ddpm = DiffusionSampler(solver="ddpm", **common).sample(N, 1000, seed=4, x_T=exact_start(schedule, seed=4))
    dpm_moment_err = abs(float(dpm.mean()) - MU) + abs(float(dpm.std()) - S)
    ddpm_moment_err = abs(float(ddpm.mean()) - MU) + abs(float(ddpm.std()) - S)
    assert dpm_moment_err <= ddpm_moment_err + 0.015
    # and DDIM with the same 20 evaluations is clearly less accurate than the 2nd-order solver
    ddim = DiffusionSampler(solver="ddim", **common).sample(N, 20, x_T=x_T.clone())
    assert float((ddim - exact).abs().mean()) > 2 * per_sample_err


def test_dpm_solver_second_order_converges_faster_than_first():
    sch = LinearSchedule(1000)
    den = GaussianDenoiser(sch, MU, S)
    x_T = torch.randn(256, D, generator=torch.Generator().manual_seed(0))
    common = dict(denoiser=den, schedule=sch, parameterization="x0", sample_shape=(D,), sample_batch_size=256, progress=False)
    errs = {}
    for order in (1, 2):
        for n in (10, 40):
            out = DiffusionSampler(solver="dpm_solver++", solver_kwargs={"order": order}, **common).sample(256, n, x_T=x_T.clone())
            exact = den.exact_ode_map(x_T.double(), sch.sample_times(n)[0]).float()
            errs[order, n] = float((out - exact).abs().mean())
    assert errs[2, 10] < errs[1, 10] and errs[2, 40] < errs[1, 40]
    assert errs[2, 40] < 0.5 * errs[2, 10]


@pytest.mark.parametrize("solver,steps,tol", [("dpm_solver++", 30, 0.06), ("euler_maruyama", 100, 0.1), ("pf_ode", 100, 0.1), ("ddpm", 200, 0.1)])
def test_default_grid_handles_components_of_very_different_scale(solver, steps, tol):
    """Per-component std spanning 300x (like frequency components of price series): with the default
    log-SNR grid and VPSDE() every component keeps its std (uniform-in-t grids miss by 30-70%)."""
    sde = VPSDE()
    std = torch.tensor([3.0, 1.0, 0.3, 0.1, 0.03, 0.01])

    def den(x, t, cond=None):
        a, s = sde.alpha_sigma(t)
        a, s = a[:, None], s[:, None]
        return a * std**2 / (a**2 * std**2 + s**2) * x

    x = DiffusionSampler(denoiser=den, schedule=sde, parameterization="x0", sample_shape=(6,), solver=solver,
                         sample_batch_size=4000, progress=False).sample(4000, steps, seed=0)
    ratio = x.std(0) / std
    assert torch.all((ratio - 1).abs() < tol), ratio


def test_coarse_brownian_noise_keeps_the_path_and_is_standard_normal():
    from tsdiff.sampling import coarsen_brownian_noise

    times = VPSDE().sample_times(13, spacing="logsnr")
    noise = torch.randn(12, 4000, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(coarsen_brownian_noise(noise, times, 13), noise)
    coarse = coarsen_brownian_noise(noise, times, 5)  # every 3rd time point
    dt = (times[:-1] - times[1:]).double()
    dw_fine = (noise.double() * dt.sqrt()[:, None, None]).view(4, 3, 4000, 3).sum(1)
    dt_coarse = (times[:-1:3] - times[3::3]).double()
    torch.testing.assert_close(coarse.double() * dt_coarse.sqrt()[:, None, None], dw_fine)
    assert abs(float(coarse.std()) - 1.0) < 0.03
    with pytest.raises(ValueError, match="subset"):
        coarsen_brownian_noise(noise, times, 6)


def test_euler_maruyama_uses_given_noise_and_checks_its_shape():
    sched = VPSDE()
    model = PredictionModel(as_diffusion_model(denoiser=lambda x, t, c: 0.5 * x, schedule=sched, parameterization="x0"))
    times = sched.sample_times(6, spacing="logsnr")
    x = torch.randn(2, 4, 1, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(5, 2, 4, 1, generator=torch.Generator().manual_seed(2))
    a = euler_maruyama(model, x.clone(), times, generator=torch.Generator().manual_seed(3), noise=noise)
    b = euler_maruyama(model, x.clone(), times, generator=torch.Generator().manual_seed(4), noise=noise)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="noise must have shape"):
        euler_maruyama(model, x.clone(), times, noise=noise[:4])
