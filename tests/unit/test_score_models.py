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


def test_ema_tracks_the_weights_and_is_used_for_inference():
    m = _model(ema_decay=0.5)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    m.on_train_batch_end(None, None, 0)  # global_step 0 -> warm-up decay 0.1
    m.eval()
    assert m.score_network is m.net_ema
    m.train()
    assert m.score_network is m.net
    p_ema, p = next(m.net_ema.parameters()), next(m.net.parameters())
    assert torch.allclose(p_ema, p, atol=0.15)


def test_invalid_model_arguments():
    with pytest.raises(ValueError, match="parameterization"):
        _model(parameterization="score")
    with pytest.raises(ValueError, match="ema_decay"):
        _model(ema_decay=1.0)
