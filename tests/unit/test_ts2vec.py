"""TS2Vec encoder (tsdiff.nets.ts2vec) and the stacked trainer of Context-FID built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsdiff import metrics as M
from tsdiff.metrics._checks import seeded_torch, torch_threads
from tsdiff.metrics.ts2vec import StackedTS2VecEncoder, encode_full_series, train_ts2vec
from tsdiff.nets.ts2vec import TS2VecEncoder


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _sines(n, length, channels, shift=0.0, noise=0.0, seed=0):
    g = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, length)[None, :, None]
    x = 0.5 + 0.4 * np.sin(t + g.uniform(0, 2 * np.pi, (n, 1, channels))) + shift
    return x + noise * g.standard_normal(x.shape)


def test_trained_encodings_unchanged_by_the_move_to_nets():
    """Small encoders trained for 4 iterations; values from commit b57bb51 (before the move), one thread."""
    x = torch.as_tensor(np.random.default_rng(0).random((10, 7, 2)), dtype=torch.float32)
    with seeded_torch(0, torch.device("cpu")):
        model = train_ts2vec(x, 4, [0, 3], batch_size=4, output_dims=8, hidden_dims=6, depth=3)
        emb = encode_full_series(model, x)
    assert emb.shape == (2, 10, 8)
    np.testing.assert_allclose(emb.double().sum(dim=(1, 2)).numpy(), [7.0065794959664345, 14.8100461140275], rtol=1e-5)
    np.testing.assert_allclose(emb[1, 2, :3].numpy(), [0.18095716834068298, 0.24253898859024048, 0.5298280119895935],
                               rtol=1e-5)


@pytest.mark.slow
def test_context_fid_values_unchanged_by_the_move_to_nets():
    """Values computed on commit b57bb51 (before the encoder moved to tsdiff.nets), one thread."""
    real = _sines(24, 12, 3, seed=0)
    fake = _sines(20, 12, 3, shift=0.1, noise=0.05, seed=1)
    got = M.context_fid_runs(real, fake, [0, 3], iterations=3, batch_size=8)
    np.testing.assert_allclose(got, [0.5528400902505963, 0.6017597169311639], rtol=1e-6)
    one = M.context_fid_runs(real[:, :, :1], fake[:, :, :1], [5], iterations=2, batch_size=4)
    np.testing.assert_allclose(one, [0.3238501788526477], rtol=1e-6)


def test_stacked_encoder_is_the_single_encoders_side_by_side():
    x = torch.randn(2, 5, 9, 3)
    stacked = StackedTS2VecEncoder(3, [4, 11], output_dims=8, hidden_dims=6, depth=3).eval()
    out = stacked(x)
    assert out.shape == (2, 5, 9, 8)
    for r, seed in enumerate([4, 11]):
        single = TS2VecEncoder(3, output_dims=8, hidden_dims=6, depth=3, seed=seed).eval()
        torch.testing.assert_close(single(x[r]), out[r])
        torch.testing.assert_close(stacked.encoder(r)(x[r]), out[r])
        assert single.encode(x[r]).shape == (5, 8)


def test_encoder_mask_zeroes_projected_steps_and_rejects_bad_input():
    enc = TS2VecEncoder(2, output_dims=4, hidden_dims=4, depth=1, seed=0).eval()
    x = torch.randn(3, 6, 2)
    keep = torch.ones(3, 6, dtype=torch.bool)
    torch.testing.assert_close(enc(x, keep), enc(x))
    drop = keep.clone()
    drop[:, 2] = False
    x2 = x.clone()
    x2[:, 2] = 100.0  # a masked step's value must not matter
    torch.testing.assert_close(enc(x2, drop), enc(x, drop))
    with pytest.raises(ValueError, match="expected input"):
        enc(torch.randn(3, 6, 5))
    with pytest.raises(ValueError, match="hidden_dims"):
        TS2VecEncoder(2, hidden_dims=0)
