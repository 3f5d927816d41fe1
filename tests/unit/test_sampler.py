import pytest
import torch

from tsdiff.caching import CachePolicy, NoCache
from tsdiff.diffusion import VPSDE, LinearSchedule
from tsdiff.sampling import DiffusionSampler

from gaussian import GaussianDenoiser


class TinyModel(torch.nn.Module):
    """A minimal object satisfying the denoiser contract, with a learnable layer and a decode step."""

    parameterization = "eps"
    sample_shape = (6, 2)

    def __init__(self):
        super().__init__()
        self.schedule = LinearSchedule(50)
        self.lin = torch.nn.Linear(2, 2)
        self.seen_cond = []

    def denoise(self, x, t, cond=None):
        self.seen_cond.append(cond)
        assert not self.training, "the sampler must put the model in eval mode"
        out = self.lin(x) * 0.1
        if cond is not None:
            out = out + cond.reshape(-1, 1, 1)
        return out

    def decode(self, x):
        return x * 10.0


def _sampler(**kw):
    kw.setdefault("progress", False)
    return DiffusionSampler(TinyModel(), **kw)


def test_same_seed_same_samples_and_different_seed_different():
    s = _sampler(sample_batch_size=3)
    a = s.sample(7, 10, seed=1)
    b = s.sample(7, 10, seed=1)
    c = s.sample(7, 10, seed=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_generator_argument_is_used():
    s = _sampler()
    a = s.sample(4, 5, generator=torch.Generator().manual_seed(3))
    b = s.sample(4, 5, seed=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunking_shapes_stats_decode_and_train_mode_restored():
    model = TinyModel().train()
    s = DiffusionSampler(score_model=model, sample_batch_size=4, progress=False)
    x, stats = s.sample(10, 8, seed=0, return_stats=True)
    assert x.shape == (10, 6, 2)
    assert stats.network_evaluations == 3 * 8  # 3 chunks x 8 steps
    assert stats.cache["network_calls"] == 24 and stats.cache["fraction_recomputed"] == 1.0
    assert stats.wall_time_s > 0 and stats.samples_per_s > 0
    assert model.training, "train mode must be restored after sampling"
    raw = s.sample(10, 8, seed=0, decode=False)
    torch.testing.assert_close(x, raw * 10.0)


def test_cond_is_split_into_chunks_and_passed_through():
    model = TinyModel()
    s = DiffusionSampler(model, sample_batch_size=2, progress=False)
    cond = torch.arange(5, dtype=torch.float32)
    s.sample(5, 3, seed=0, cond=cond)
    seen = [c.tolist() for c in model.seen_cond]
    assert seen[0] == [0.0, 1.0] and seen[3] == [2.0, 3.0] and seen[-1] == [4.0]


def test_callback_and_guidance_run_inside_the_loop():
    sch = LinearSchedule(100)
    den = GaussianDenoiser(sch, 0.0, 1.0)
    calls = []
    # guidance that pulls every x0 prediction to 5: the samples must end at 5
    s = DiffusionSampler(denoiser=den, schedule=sch, parameterization="x0", sample_shape=(3,),
                         guidance=lambda x0, x, t, step: torch.full_like(x0, 5.0), progress=False, solver="ddim")
    out = s.sample(4, 10, seed=0, callback=calls.append)
    torch.testing.assert_close(out, torch.full((4, 3), 5.0))
    assert [c["step"] for c in calls] == list(range(10))


def test_no_cache_policy_is_bit_identical_to_plain_loop():
    sch = VPSDE()
    den = GaussianDenoiser(sch, 0.3, 0.7)
    common = dict(denoiser=den, schedule=sch, parameterization="x0", sample_shape=(5,), progress=False)
    a = DiffusionSampler(**common).sample(8, 20, seed=5)
    b = DiffusionSampler(cache=NoCache(), **common).sample(8, 20, seed=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_custom_cache_policy_sees_every_call_and_is_reset():
    class Counting(CachePolicy):
        def start(self, denoiser, num_steps, batch_size):
            super().start(denoiser, num_steps, batch_size)
            self.steps = []

        def __call__(self, denoise, x, t, cond, step):
            self.steps.append(step)
            self._stats.network_calls += 1
            return denoise(x, t, cond)

    pol = Counting()
    s = _sampler(cache=pol, sample_batch_size=2)
    s.sample(3, 4, seed=0)
    assert pol.steps == [0, 1, 2, 3]  # reset at the start of the last chunk
    assert s.last_stats.cache["network_calls"] == 8


@pytest.mark.parametrize(
    "kwargs,sample_kw,match",
    [
        ({}, {"num_samples": 2, "num_diffusion_steps": 0}, "positive integer"),
        ({}, {"num_samples": 0, "num_diffusion_steps": 5}, "num_samples must be a positive integer"),
        ({"solver": "rk45"}, None, "unknown solver 'rk45'"),
        ({"sample_batch_size": 0}, None, "sample_batch_size"),
        ({}, {"num_samples": 2, "num_diffusion_steps": 51}, "exceeds the model's 50 training steps"),
        ({}, {"num_samples": 2}, "num_diffusion_steps is required"),
        ({"solver": "euler_maruyama"}, {"num_samples": 2, "num_diffusion_steps": 5}, "needs a continuous schedule"),
        ({"cache_kwargs": {"K": 3}}, None, "use_cache is False"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, sample_kw, match):
    with pytest.raises(ValueError, match=match):
        s = _sampler(**kwargs)
        s.sample(**sample_kw)


def test_shape_that_does_not_match_the_model_is_a_clear_error():
    s = _sampler(sample_shape=(6, 3))  # the model's layer expects 2 channels
    with pytest.raises((ValueError, RuntimeError)):
        s.sample(2, 3, seed=0)
    s = _sampler()
    with pytest.raises(ValueError, match="x_T has shape"):
        s.sample(2, 3, x_T=torch.zeros(2, 5, 2))

    def bad_denoiser(x, t, cond=None):
        return x[:, :1]

    s = DiffusionSampler(denoiser=bad_denoiser, schedule=VPSDE(), parameterization="x0", sample_shape=(4,), progress=False)
    with pytest.raises(ValueError, match="does not match the model"):
        s.sample(2, 3, seed=0)


def test_object_without_contract_is_rejected():
    with pytest.raises(TypeError, match="denoiser contract"):
        DiffusionSampler(torch.nn.Linear(2, 2))


def test_device_comes_from_the_model_or_config():
    s = _sampler()
    assert s.device.type == "cpu"
    s = _sampler(device="cpu")
    assert s.sample(2, 3, seed=0).device.type == "cpu"
