import itertools

import pytest
import torch

from tsdiff.diffusion.parameterization import PARAMETERIZATIONS, check_parameterization, from_x0, to_x0


@pytest.mark.parametrize("src,seed", list(itertools.product(PARAMETERIZATIONS, range(5))))
def test_conversions_are_exact_inverses(src, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, 3, generator=gen, dtype=torch.float64)
    # random VP-consistent per-sample alpha/sigma, as every parameterization (incl. v) is defined there
    alpha = torch.rand(7, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    sigma = torch.sqrt(1 - alpha**2)
    pred = torch.randn(7, 5, 3, generator=gen, dtype=torch.float64)
    x0 = to_x0(pred, src, x, alpha, sigma)
    for dst in PARAMETERIZATIONS:
        back = to_x0(from_x0(x0, dst, x, alpha, sigma), dst, x, alpha, sigma)
        torch.testing.assert_close(back, x0)
    torch.testing.assert_close(from_x0(x0, src, x, alpha, sigma), pred)


def test_eps_and_score_relation_on_a_known_point():
    x, alpha, sigma = torch.tensor([[2.0]]), torch.tensor([0.6]), torch.tensor([0.8])
    x0 = torch.tensor([[1.0]])
    eps = from_x0(x0, "eps", x, alpha, sigma)
    torch.testing.assert_close(eps, torch.tensor([[(2.0 - 0.6) / 0.8]]))
    torch.testing.assert_close(from_x0(x0, "score", x, alpha, sigma), -eps / 0.8)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="unknown parameterization 'noise'"):
        check_parameterization("noise")
