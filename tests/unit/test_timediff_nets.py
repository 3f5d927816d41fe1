"""TimeDiff networks and the linear baselines' nets: shapes for every horizon/lookback, paper details."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsdiff.nets.baselines import ARLinear, DLinear, instance_denormalize, instance_normalize
from tsdiff.nets.embeddings import StepEmbedding
from tsdiff.nets.timediff import (
    ConditionNet,
    ConvBlock,
    PerChannel,
    PerChannelDenoiser,
    TimeDiffDenoiser,
    condition_network,
    denoising_network,
)

# (lookback, horizon): the paper's horizons (Table 1: 14, 168, 192, 672, 720; Table 8: 96, 336) and
# the bundled-data settings, with lookbacks shorter, equal and longer than the horizon
def close(a, b, atol=1e-5, rtol=1e-5):
    # torch.allclose rather than torch.testing.assert_close, whose first call costs seconds of imports
    assert a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol), (a - b).abs().max()


SHAPES = [(96, 14), (144, 24), (96, 96), (96, 168), (192, 192), (96, 336), (192, 672), (96, 720), (8, 1)]
C, B, HID = 3, 2, 8


@pytest.mark.parametrize("lookback,horizon", SHAPES)
def test_every_net_maps_lookback_to_horizon(lookback, horizon):
    x = torch.randn(B, lookback, C)
    cond_net = ConditionNet(C, lookback, horizon, hidden=HID)
    ar = ARLinear(C, lookback, horizon)
    dlinear = DLinear(C, lookback, horizon)
    assert cond_net(x).shape == (B, horizon, C)
    assert ar(x).shape == (B, horizon, C)
    assert dlinear(x).shape == (B, horizon, C)
    for cond_channels in (2 * C, C):  # with and without z_ar (Table 4)
        den = TimeDiffDenoiser(C, horizon, cond_channels, hidden=HID)
        out = den(torch.randn(B, horizon, C), torch.tensor([0, 99]), torch.randn(B, horizon, cond_channels))
        assert out.shape == (B, horizon, C)


def test_conv_block_is_table_11():
    block = ConvBlock(4, 6)
    conv, bn, act, drop = block
    assert isinstance(conv, nn.Conv1d) and conv.kernel_size == (3,) and conv.stride == (1,) and conv.padding == (1,)
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 6
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == pytest.approx(0.1)
    assert isinstance(drop, nn.Dropout) and drop.p == pytest.approx(0.1)
    assert block(torch.randn(2, 4, 7)).shape == (2, 6, 7)


def test_step_embedding_two_fc_silu_and_distinct_steps():
    emb = StepEmbedding(out_dim=16, sinusoid_dim=128, hidden_dim=128)
    fc1, act1, fc2, act2 = emb.mlp
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (128, 128, 16)
    assert isinstance(act1, nn.SiLU) and isinstance(act2, nn.SiLU)
    p = emb(torch.tensor([0.0, 1.0, 50.0]))
    assert p.shape == (3, 16)
    assert not torch.allclose(p[0], p[1]) and not torch.allclose(p[1], p[2])


def test_ar_linear_is_equation_16():
    """z_ar[h, c] = sum_i W_i[c, h] x_i[c] + B[c, h] (Hadamard products, channels do not mix)."""
    ar = ARLinear(2, 5, 3)
    x = torch.randn(4, 5, 2)
    expected = torch.zeros(4, 3, 2)
    for i in range(5):
        expected += ar.weight[i].T.unsqueeze(0) * x[:, i : i + 1, :]  # W_i (d x H) ⊙ H copies of x_i
    expected += ar.bias
    close(ar(x), expected)


def test_dlinear_decomposition_keeps_constants():
    net = DLinear(2, 30, 5, kernel_size=25)
    x = torch.full((1, 2, 30), 3.0)
    close(net.decomp(x), x)  # the moving average of a constant is the constant
    assert net(torch.randn(2, 30, 2)).shape == (2, 5, 2)


def test_instance_normalization_round_trip():
    x = torch.randn(4, 20, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    normed, mean, std = instance_normalize(x, eps=1e-8)
    close(normed.mean(dim=1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    close(normed.std(dim=1, unbiased=False), torch.ones(4, 3), atol=1e-4, rtol=0)
    close(instance_denormalize(normed, mean, std), x, atol=1e-4, rtol=1e-5)


def test_instance_normalization_of_a_flat_window_is_bounded():
    x = torch.zeros(1, 10, 1)
    normed, _, std = instance_normalize(x, eps=1e-3)
    assert torch.all(normed == 0) and float(std) == pytest.approx(1e-3**0.5)


def test_wrong_layout_is_a_clear_error():
    net = ConditionNet(3, 16, 4, hidden=HID)
    with pytest.raises(ValueError, match=r"\(batch, length, channels\)"):
        net(torch.randn(2, 3, 16))  # (batch, channels, length) by mistake
    with pytest.raises(ValueError, match="positive integer"):
        ARLinear(3, 0, 4)


def test_denoiser_residual_adds_z_mix_to_the_decoder_output():
    """decoder_residual (authors' code): x_theta = decoder(concat(c, z_2)) + z_mix, z_mix = c[..., :d]."""
    torch.manual_seed(0)
    d, h = 3, 8
    net = TimeDiffDenoiser(d, h, 2 * d, hidden=16).eval()
    final = net.decoder[-1]
    nn.init.zeros_(final.weight)
    nn.init.zeros_(final.bias)
    x, k, c = torch.randn(2, h, d), torch.tensor([1.0, 50.0]), torch.randn(2, h, 2 * d)
    assert torch.allclose(net(x, k, c), c[..., :d])
    bare = TimeDiffDenoiser(d, h, 2 * d, hidden=16, residual=False).eval()
    nn.init.zeros_(bare.decoder[-1].weight)
    nn.init.zeros_(bare.decoder[-1].bias)
    assert torch.allclose(bare(x, k, c), torch.zeros(2, h, d))


def test_zero_output_makes_f_zero_and_the_denoiser_return_z_mix():
    torch.manual_seed(0)
    d, h, lb = 3, 8, 16
    cond_net = ConditionNet(d, lb, h, hidden=HID).zero_output_().eval()
    assert torch.equal(cond_net(torch.randn(2, lb, d)), torch.zeros(2, h, d))
    net = TimeDiffDenoiser(d, h, 2 * d, hidden=16).zero_output_().eval()
    x, k, c = torch.randn(2, h, d), torch.tensor([1.0, 50.0]), torch.randn(2, h, 2 * d)
    assert torch.equal(net(x, k, c), c[..., :d])
    assert all(p.requires_grad for p in net.decoder[-1].parameters())  # zeroed, not frozen


def test_per_channel_nets_treat_every_variable_alone_with_shared_weights():
    """Channel independence (Appendix C): variable j of the output depends only on variable j of the
    input (and its own condition channels), through one set of weights."""
    torch.manual_seed(0)
    d, h, lb = 3, 5, 12
    inner = ConditionNet(1, lb, h, hidden=HID).eval()
    cond_net = PerChannel(inner).eval()
    x = torch.randn(2, lb, d)
    out = cond_net(x)
    assert out.shape == (2, h, d)
    for j in range(d):
        close(out[..., j : j + 1], inner(x[..., j : j + 1]))
    assert cond_net(x[..., :2]).shape == (2, h, 2)  # any number of variables (CI training subsets)

    den_inner = TimeDiffDenoiser(1, h, 2, hidden=HID).eval()
    den = PerChannelDenoiser(den_inner).eval()
    xt, k = torch.randn(2, h, d), torch.tensor([3.0, 7.0])
    z_mix, z_ar = torch.randn(2, h, d), torch.randn(2, h, d)
    y = den(xt, k, torch.cat([z_mix, z_ar], dim=-1))
    for j in range(d):
        cj = torch.cat([z_mix[..., j : j + 1], z_ar[..., j : j + 1]], dim=-1)
        close(y[..., j : j + 1], den_inner(xt[..., j : j + 1], k, cj))
    with pytest.raises(ValueError, match="univariate denoiser"):
        PerChannelDenoiser(TimeDiffDenoiser(2, h, 4, hidden=HID))
    with pytest.raises(ValueError, match=r"cond \(B, H, 2 \* C\)"):
        den(xt, k, z_mix)


def test_conv_block_inference_path_folds_batchnorm_exactly():
    """Eval mode without autograd folds BatchNorm into the convolution: same output as the layer stack."""
    torch.manual_seed(0)
    block = ConvBlock(3, 5, dropout=0.0)
    block[1].running_mean.uniform_(-1, 1)
    block[1].running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(block[1].weight, 0.5, 1.5)
    nn.init.uniform_(block[1].bias, -0.5, 0.5)
    block.eval()
    x = torch.randn(4, 3, 7)
    reference = block(x)  # grad enabled: the plain layers
    with torch.inference_mode():
        folded = block(x)
    close(folded, reference)
    block.train()
    with torch.no_grad():
        batch_stats = block(x)  # training mode normalizes with the batch's statistics, never the folded ones
    assert not torch.allclose(batch_stats, folded, atol=1e-3)


def test_network_builders_give_multivariate_or_channel_independent_nets():
    """condition_network / denoising_network (the config's _partial_ targets): d-variate nets, or one
    univariate net shared by every variable that sees its own G condition channels."""
    f = condition_network(C, 16, 4, hidden=HID)
    den = denoising_network(C, 4, 2 * C, hidden=HID, step_sinusoid_dim=8, step_hidden_dim=8)
    assert isinstance(f, ConditionNet) and f.n_channels == C
    assert isinstance(den, TimeDiffDenoiser) and (den.n_channels, den.cond_channels) == (C, 2 * C)
    f_ci = condition_network(C, 16, 4, hidden=HID, channel_independent=True)
    den_ci = denoising_network(C, 4, 2 * C, hidden=HID, step_sinusoid_dim=8, step_hidden_dim=8, channel_independent=True)
    assert isinstance(f_ci, PerChannel) and f_ci.net.n_channels == 1
    assert isinstance(den_ci, PerChannelDenoiser) and (den_ci.net.n_channels, den_ci.net.cond_channels) == (1, 2)
    assert den_ci(torch.randn(B, 4, C), torch.tensor([1.0, 2.0]), torch.randn(B, 4, 2 * C)).shape == (B, 4, C)
    with pytest.raises(ValueError, match="multiple of n_channels"):
        denoising_network(C, 4, C + 1, hidden=HID)
