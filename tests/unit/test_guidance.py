"""Guidance hooks shipped with tsdiff (tsdiff.sampling.guidance) and how the sampler applies them."""

import pytest
import torch

from tsdiff.diffusion.schedules import LinearSchedule
from tsdiff.sampling import DiffusionSampler
from tsdiff.sampling.guidance import ClipDenoised


class _Wild(torch.nn.Module):
    """An x0 model that predicts far outside [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.schedule = LinearSchedule(num_timesteps=10)
        self.parameterization = "x0"
        self.sample_shape = (4, 1)

    def denoise(self, x, t, cond=None):
        return 5.0 + 0 * x


def test_clip_denoised_bounds_every_prediction_and_so_the_ddpm_sample():
    hook = ClipDenoised()
    x = torch.tensor([-3.0, 0.5, 2.0])
    assert hook(x, x, torch.zeros(3), 0).tolist() == [-1.0, 0.5, 1.0]
    plain = DiffusionSampler(_Wild(), solver="ddpm").sample(8, 10, seed=0)
    clipped = DiffusionSampler(_Wild(), solver="ddpm", guidance=hook).sample(8, 10, seed=0)
    assert plain.mean() > 4.0 and clipped.abs().max() <= 1.0 + 1e-5  # the last DDPM step returns x0_hat
    with pytest.raises(ValueError, match="low < high"):
        ClipDenoised(1.0, -1.0)
