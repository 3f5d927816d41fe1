"""Sampling: the DiffusionSampler, the denoiser contract and the solvers."""

from tsdiff.sampling.contract import DiffusionModel
from tsdiff.sampling.denoiser import Denoiser, PredictionModel, as_diffusion_model
from tsdiff.sampling.sampler import DiffusionSampler, SamplerStats
from tsdiff.sampling.solvers import SOLVERS, coarsen_brownian_noise, ddim, ddpm, dpm_solver_pp, euler_maruyama, get_solver, pf_ode

__all__ = [
    "coarsen_brownian_noise",
    "DiffusionSampler",
    "SamplerStats",
    "Denoiser",
    "DiffusionModel",
    "PredictionModel",
    "as_diffusion_model",
    "SOLVERS",
    "get_solver",
    "ddpm",
    "ddim",
    "dpm_solver_pp",
    "euler_maruyama",
    "pf_ode",
]
