from functools import partial

import pytest
import torch

from tsdiff.diffusion import VESDE, VPSDE
from tsdiff.diffusion.fourier import whiten
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import LSTMScoreNet, TransformerScoreNet
from tsdiff.sampling import DiffusionSampler

NETS = {
    "transformer": partial(TransformerScoreNet, d_model=16, num_layers=2, num_heads=2, dim_feedforward=32),
    "lstm": partial(LSTMScoreNet, d_model=16, num_layers=2),
    "transformer_patched": partial(TransformerScoreNet, d_model=16, num_layers=2, num_heads=2, dim_feedforward=32,
                                   patch_size=3),
}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("length,channels", [(1, 1), (7, 2), (24, 6)])
def test_every_network_maps_input_shape_to_itself(name, length, channels):
    net = NETS[name](n_channels=channels, max_len=length)
    x, t = torch.randn(3, length, channels), torch.rand(3)
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", NETS)
def test_networks_reject_wrong_shapes(name):
    net = NETS[name](n_channels=2, max_len=8)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 8, 2\)"):
        net(torch.randn(2, 9, 2), torch.rand(2))


def test_transformer_layers_are_reachable_and_compose_the_forward():
    net = NETS["transformer"](n_channels=2, max_len=8).eval()
    x, t = torch.randn(4, 8, 2), torch.rand(4)
    h = net.embed_tokens(x, t)
    for layer in net.layers:
        q, k, v = layer.project_qkv(h)
        assert q.shape == (4, 2, 8, 8)
        a = layer.attend(q, k, v)
        h = h + a
        h = h + layer.feedforward_branch(h)
    torch.testing.assert_close(net.readout(h), net(x, t))


def _model(**kw):
    kw.setdefault("backbone", NETS["transformer"])
    kw.setdefault("noise_scheduler", VPSDE())
    return ScoreModule(n_channels=2, max_len=8, **kw)


@pytest.mark.parametrize("fourier", [True, False])
@pytest.mark.parametrize("param", ["x0", "eps"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=repr)
def test_loss_is_finite_and_sampling_returns_time_domain_series(fourier, param, sde):
    m = _model(fourier_transform=fourier, parameterization=param, noise_scheduler=sde)
    loss = m.diffusion_loss(torch.randn(5, 8, 2))
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = DiffusionSampler(m, progress=False).sample(3, 4, seed=0)
    assert out.shape == (3, 8, 2) and torch.isfinite(out).all()


def test_likelihood_weighting_changes_the_loss():
    x = torch.randn(16, 8, 2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = _model().diffusion_loss(x, gen())
    torch.manual_seed(0)
    weighted = _model(likelihood_weighting=True).diffusion_loss(x, gen())
    assert not torch.isclose(plain, weighted)


def test_preconditioned_denoiser_is_sane_at_high_noise_before_training():
    """At t=1 the data prediction must be O(data std) even for a random network (no 1/alpha blow-up)."""
    m = _model().eval()
    m.data_std.fill_(3.0)
    x = torch.randn(64, 8, 2)
    x0 = m.denoise(x, torch.ones(64))
    assert x0.abs().max() < 3.0 * 10


def test_fit_data_std_uses_the_frequency_representation():
    m = _model(fourier_transform=True)
    windows = torch.randn(500, 8, 2) * 0.1 + torch.linspace(-3, 3, 500)[:, None, None]  # varying level
    m.fit_data_std(windows)
    expected = whiten(windows).std(0)
    torch.testing.assert_close(m.data_std, expected)
    assert m.data_std[0].min() > 5 * m.data_std[1:].max()  # the DC component dominates


def test_the_weight_average_is_the_shared_ema_callback_with_warmup():
    from tsdiff.models.callbacks import EMA

    (cb,) = _model(ema_decay=0.5).configure_callbacks()
    assert isinstance(cb, EMA) and cb.warmup and cb.decay == 0.5
    assert cb.decay_at(0) == min(0.5, 2 / 11)
    assert _model(ema_decay=0.0).configure_callbacks() == []


def test_runs_saved_with_the_builtin_average_load_its_weights_into_net():
    m = _model(ema_decay=0.5)
    state = m.state_dict()
    legacy = {("net_ema." + k[4:] if k.startswith("net.") else k): v + 1.0 if k.startswith("net.") else v
              for k, v in state.items()}
    legacy.update({k: v for k, v in state.items() if k.startswith("net.")})  # the live weights, also saved
    fresh = _model(ema_decay=0.5)
    fresh.load_state_dict(legacy, strict=True)
    k = next(k for k in state if k.startswith("net."))
    torch.testing.assert_close(fresh.state_dict()[k], state[k] + 1.0)  # the average, not the live weights


def test_invalid_model_arguments():
    with pytest.raises(ValueError, match="parameterization"):
        _model(parameterization="score")
    with pytest.raises(ValueError, match="ema_decay"):
        _model(ema_decay=1.0)


@pytest.mark.parametrize("fourier", [True, False])
def test_support_clamp_keeps_predictions_and_samples_in_the_training_range_but_not_the_loss(fourier):
    """clip_x0 clamps x0_hat per channel in the time domain (Diffusion-TS's clip_denoised); training never clamps."""
    torch.manual_seed(0)
    windows = torch.rand(64, 8, 2) * torch.tensor([1.0, 4.0]) + torch.tensor([0.0, -2.0])  # [0,1] and [-2,2]
    m = _model(fourier_transform=fourier, clip_x0=True).eval()
    m.fit_data_std(windows)
    torch.testing.assert_close(m.data_min, windows.amin(dim=(0, 1)))
    torch.testing.assert_close(m.data_max, windows.amax(dim=(0, 1)))
    z = m.encode(torch.randn(16, 8, 2) * 10)
    x0 = m.decode(m.denoise(z, torch.full((16,), 0.5)))
    assert (x0 >= m.data_min - 1e-5).all() and (x0 <= m.data_max + 1e-5).all()
    raw = m.decode(m.denoise(z, torch.full((16,), 0.5), clip=False))
    assert ((raw < m.data_min) | (raw > m.data_max)).any()  # the clamp did something
    out = DiffusionSampler(m, solver="ddim", progress=False).sample(8, 5, seed=0)
    assert (out >= m.data_min - 1e-4).all() and (out <= m.data_max + 1e-4).all()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m.clip_x0 = False
    plain = m.diffusion_loss(windows, gen())
    m.clip_x0 = True
    torch.testing.assert_close(m.diffusion_loss(windows, gen()), plain)


def test_runs_saved_before_the_support_clamp_load_without_a_range():
    m = _model(clip_x0=True)
    m.fit_data_std(torch.rand(32, 8, 2))
    state = {k: v for k, v in m.state_dict().items() if k not in ("data_min", "data_max")}
    fresh = _model(clip_x0=True)
    fresh.load_state_dict(state, strict=True)
    assert torch.isinf(fresh.data_min).all() and torch.isinf(fresh.data_max).all()
    z = torch.randn(4, 8, 2)
    torch.testing.assert_close(fresh.denoise(z, torch.full((4,), 0.3)), fresh.denoise(z, torch.full((4,), 0.3), clip=False))
    with pytest.raises(ValueError, match="clip_x0"):
        _model(parameterization="eps", clip_x0=True)


def test_the_support_clamp_is_a_sampling_time_setting_of_cmd_sample():
    from omegaconf import OmegaConf

    from tsdiff.tasks.sampler_cfg import apply_model_settings

    m = _model()
    apply_model_settings(OmegaConf.create({"model_settings": {"clip_x0": True}}), m)
    assert m.clip_x0 is True
    with pytest.raises(ValueError, match="no sampling-time setting 'skip'"):
        apply_model_settings(OmegaConf.create({"model_settings": {"skip": "diagonal"}}), m)
