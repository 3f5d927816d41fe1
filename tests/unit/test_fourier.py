import pytest
import torch

from tsdiff.diffusion.fourier import dft, frequency_index, idft, noise_scale, unwhiten, whiten


@pytest.mark.parametrize("length", [1, 2, 7, 24, 25, 187])
def test_dft_round_trip_and_shape(length):
    x = torch.randn(3, length, 2, dtype=torch.float64)
    y = dft(x)
    assert y.shape == x.shape
    torch.testing.assert_close(idft(y), x)
    torch.testing.assert_close(unwhiten(whiten(x)), x)


@pytest.mark.parametrize("length", [8, 9])
def test_whitening_is_orthogonal(length):
    eye = torch.eye(length, dtype=torch.float64).reshape(length, length, 1)  # batch of unit series
    w = whiten(eye)[..., 0]  # (length, length) matrix
    torch.testing.assert_close(w @ w.T, torch.eye(length, dtype=torch.float64))


@pytest.mark.parametrize("length", [24, 25])
def test_noise_scaling_keeps_noise_white_in_time(length):
    """dft(white noise) has per-component std S; S * white noise maps back to white noise in time."""
    gen = torch.Generator().manual_seed(0)
    n = 40000
    eps_time = torch.randn(n, length, 1, generator=gen, dtype=torch.float64)
    std = dft(eps_time).std(dim=0)
    torch.testing.assert_close(std, noise_scale(length, dtype=torch.float64), atol=0.02, rtol=0)
    back = idft(noise_scale(length, dtype=torch.float64) * torch.randn(n, length, 1, generator=gen, dtype=torch.float64))
    cov = torch.cov(back[..., 0].T)
    torch.testing.assert_close(cov, torch.eye(length, dtype=torch.float64), atol=0.03, rtol=0)


def test_frequency_index_orders_real_then_imaginary_parts():
    assert frequency_index(6).tolist() == [0, 1, 2, 3, 1, 2]
    assert frequency_index(7).tolist() == [0, 1, 2, 3, 1, 2, 3]
