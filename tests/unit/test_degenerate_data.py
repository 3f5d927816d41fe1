"""Zero-padded beats and constant channels: the preconditioning stays of unit scale in both domains,
and patched transformer tokens cover the sequence exactly."""

from functools import partial

import numpy as np
import pytest
import torch

from tsdiff.data import BeatsDataModule, make_beats
from tsdiff.diffusion import VPSDE
from tsdiff.models.score_models import ScoreModule
from tsdiff.nets.score_nets import TransformerScoreNet
from tsdiff.sampling import DiffusionSampler

NET = partial(TransformerScoreNet, d_model=16, num_layers=1, num_heads=2, dim_feedforward=32)


def _fitted(windows: np.ndarray, fourier: bool, **kw) -> ScoreModule:
    torch.manual_seed(0)
    m = ScoreModule(n_channels=windows.shape[2], max_len=windows.shape[1], backbone=NET, noise_scheduler=VPSDE(),
                    fourier_transform=fourier, **kw)
    m.fit_data_std(torch.from_numpy(windows))
    return m


def _loss(m: ScoreModule, windows: np.ndarray) -> float:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return float(m.diffusion_loss(torch.from_numpy(windows), generator=gen))


def _padded_beats(n: int = 64, length: int = 40) -> np.ndarray:
    x, _ = make_beats(n, length=187, seed=1)
    return np.ascontiguousarray(x[:, :length])  # short beats: the tail of most windows is exact zeros


@pytest.mark.parametrize("fourier", [False, True])
def test_zero_padded_beats_keep_the_loss_of_unit_scale(fourier):
    x, _ = make_beats(32, length=96, seed=0)
    x[:, 80:] = 0.0  # constant positions: std 0 in the time domain
    centred = _loss(_fitted(x, fourier), x)
    assert centred < 5.0, centred  # an untrained F with unit-variance targets gives ~1
    if not fourier:
        # without centring the constant positions ask F for m / d: the loss that blew up training
        assert _loss(_fitted(x + 0.5, fourier, center=False), x + 0.5) > 100 * centred


@pytest.mark.parametrize("fourier", [False, True])
def test_constant_channel_trains_and_samples_finite_values(fourier):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 16, 2)).astype(np.float32)
    x[:, :, 1] = 3.0
    m = _fitted(x, fourier)
    d = m.data_std
    assert float(d.min()) >= 0.0099 * float(d.pow(2).mean().sqrt())  # relative floor, not 1e-3
    opt = torch.optim.Adam(m.net.parameters(), lr=1e-3)
    for _ in range(5):
        loss = m.diffusion_loss(torch.from_numpy(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 5.0
    out = DiffusionSampler(score_model=m.eval(), sample_batch_size=8).sample(8, 10, seed=0)
    assert torch.isfinite(out).all()
    if not fourier:  # the constant channel comes out at its training value (the mean), up to the floor
        assert torch.allclose(out[:, :, 1], torch.full_like(out[:, :, 1], 3.0), atol=0.2)


def test_old_checkpoints_without_data_mean_load_as_uncentred():
    x = _padded_beats()
    m = _fitted(x, fourier=False)
    state = {k: v for k, v in m.state_dict().items() if k != "data_mean"}
    m2 = ScoreModule(n_channels=1, max_len=x.shape[1], backbone=NET, noise_scheduler=VPSDE(), fourier_transform=False)
    m2.load_state_dict(state)
    assert torch.count_nonzero(m2.data_mean) == 0


def test_data_std_floor_is_validated():
    with pytest.raises(ValueError, match="data_std_floor"):
        ScoreModule(n_channels=1, max_len=8, backbone=NET, noise_scheduler=VPSDE(), data_std_floor=0.0)


@pytest.mark.parametrize("length,patch,tokens", [(187, 8, 24), (24, 1, 24), (10, 4, 3), (187, "auto", 4)])
def test_patched_transformer_token_count_and_exact_cover(length, patch, tokens):
    net = TransformerScoreNet(n_channels=2, max_len=length, d_model=8, num_layers=1, num_heads=2,
                              dim_feedforward=16, patch_size=patch, max_tokens=48)
    if patch != "auto":
        assert net.num_tokens == tokens
    x = torch.randn(2, length, 2)
    h = net.embed_tokens(x, torch.rand(2))
    assert h.shape == (2, net.num_tokens, 8)
    assert net.readout(h).shape == x.shape
    # a change at the last position reaches only the last token's embedding
    x2 = x.clone()
    x2[:, -1] += 1.0
    diff = (net.embed_tokens(x2, torch.zeros(2)) - net.embed_tokens(x, torch.zeros(2))).abs().sum((0, 2))
    assert torch.nonzero(diff).flatten().tolist() == [net.num_tokens - 1]


def test_patched_transformer_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="patch_size"):
        TransformerScoreNet(n_channels=1, max_len=8, patch_size=0)


def test_beats_are_seeded_padded_and_multiclass():
    a, la = make_beats(200, seed=3)
    b, lb = make_beats(200, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (200, 187, 1) and a.min() >= 0.0 and a.max() <= 1.0
    assert (a[:, -1, 0] == 0).mean() > 0.9  # zero padding at the end of almost every beat
    assert set(np.unique(la)) == {0, 1, 2}
    with pytest.raises(ValueError, match="class_weights"):
        make_beats(4, class_weights=(1.0, 0.0))


def test_beats_datamodule_splits_in_unit_range():
    dm = BeatsDataModule(n_samples=60, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    tr = dm.train_array("train")
    assert tr.shape[1:] == (187, 1) and tr.min() >= 0.0 and tr.max() <= 1.0
    assert len(tr) + len(dm.train_array("val")) + len(dm.train_array("test")) == 60
