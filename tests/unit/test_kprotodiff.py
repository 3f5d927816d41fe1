"""K-ProtoDiff and its Diffusion-TS backbone: the interpretable denoiser, the Key Prototypes Learner (its
objective learns planted patterns), Reflection Sampling (lambda = 0 is the base solver, its cost is counted,
the pull reaches the model's prototypes) and the unconditional window datamodules."""

from functools import partial

import numpy as np
import pytest
import torch

from tsdiff.diffusion.schedules import CosineSchedule
from tsdiff.models.diffusion_ts import DiffusionTS
from tsdiff.models.kprotodiff import KProtoDiff
from tsdiff.nets.diffusion_ts import DiffusionTSNet, top_k_season
from tsdiff.nets.prototypes import KeyPrototypes, band_masks
from tsdiff.sampling import DiffusionSampler
from tsdiff.sampling.reflection import extra_evaluations, reflection

from shared_fixtures import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_NET = dict(d_model=8, num_heads=2, dim_feedforward=16, n_encoder_layers=1, n_decoder_layers=1, step_sinusoid_dim=8)


def _net(**kw):
    return partial(DiffusionTSNet, **TINY_NET, **kw)


def _kprotodiff(**kw):
    torch.manual_seed(0)
    return KProtoDiff(2, 8, net=_net(), schedule=CosineSchedule(20), ema_decay=None,
                      prototypes=partial(KeyPrototypes, n_prototypes=2, **kw))


# ---------------------------------------------------------------- backbone
def test_diffusion_ts_net_parts_sum_to_the_prediction_and_context_is_checked():
    torch.manual_seed(0)
    net = DiffusionTSNet(3, 12, **TINY_NET)
    x, k = torch.randn(4, 12, 3), torch.tensor([0.0, 3.0, 7.0, 19.0])
    parts = net.decompose(x, k)
    assert parts["x0"].shape == x.shape
    torch.testing.assert_close(parts["trend"] + parts["season"] + parts["residual"], parts["x0"])
    with pytest.raises(ValueError, match="context_dim=0"):
        net(x, k, torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match=r"\(B, 12, 3\)"):
        net(torch.randn(4, 10, 3), k)
    with_ctx = DiffusionTSNet(3, 12, context_dim=5, **TINY_NET)
    assert with_ctx(x, k, torch.randn(1, 6, 5)).shape == x.shape


def test_season_keeps_exactly_the_strongest_frequencies():
    t = torch.arange(32, dtype=torch.float32)
    h = (3 * torch.sin(2 * torch.pi * 2 * t / 32) + torch.sin(2 * torch.pi * 5 * t / 32) + 0.1 * torch.cos(2 * torch.pi * 9 * t / 32))
    h = h.view(1, 32, 1) + 7.0  # the constant belongs to the trend, never to the season
    torch.testing.assert_close(top_k_season(h, 2), (h - 7.0 - 0.1 * torch.cos(2 * torch.pi * 9 * t / 32).view(1, 32, 1)),
                               atol=1e-4, rtol=0)


def test_band_masks_partition_the_real_fft_bins_and_bands_sum_to_the_window():
    masks = band_masks(24, [0.25, 0.5])
    assert masks.shape == (3, 13) and torch.equal(masks.sum(0), torch.ones(13))
    kpl = KeyPrototypes(2, 24, n_prototypes=3, band_edges=[0.25, 0.5])
    x = torch.randn(5, 24, 2)
    torch.testing.assert_close(kpl.bands(x).sum(0), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="band_edges"):
        band_masks(24, [0.5, 0.25])
    with pytest.raises(ValueError, match="do not divide seq_len=24"):
        KeyPrototypes(2, 24, segments=[5])


# ---------------------------------------------------------------- Key Prototypes Learner
def _planted(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (n, 16, 1): a random level + a random positive gain x one of three planted shapes + noise."""
    t = torch.arange(16, dtype=torch.float32)
    shapes = torch.stack([(t >= 8).float(), torch.exp(-0.5 * (t - 5) ** 2), torch.sin(2 * torch.pi * t / 8)])
    shapes = shapes - shapes.mean(1, keepdim=True)
    which = torch.randint(0, 3, (n,), generator=gen)
    gain = 0.5 + torch.rand(n, 1, generator=gen)
    x = torch.randn(n, 1, generator=gen) + gain * shapes[which] + 0.02 * torch.randn(n, 16, generator=gen)
    return x.unsqueeze(-1), shapes


def test_prototype_objective_decreases_and_learns_the_planted_patterns():
    gen = torch.Generator().manual_seed(0)
    x, shapes = _planted(96, gen)
    kpl = KeyPrototypes(1, 16, n_prototypes=3, segments=[1], band_edges=[], temperature=0.05, seed=3)
    opt = torch.optim.Adam(kpl.parameters(), lr=0.05)
    first = float(kpl.loss(x)["total"].detach())
    for _ in range(150):
        opt.zero_grad()
        kpl.loss(x)["total"].backward()
        opt.step()
    terms = kpl.loss(x)
    assert float(terms["total"]) < 0.2 * first and float(terms["recon"]) < 0.05
    learned = kpl.unit_prototypes(0, 0)                                    # (3, 16)
    cos = (torch.nn.functional.normalize(shapes, dim=1) @ learned.T).abs()  # planted x learned
    assert cos.max(dim=1).values.min() > 0.95                              # every planted shape is learned
    assert sorted(cos.argmax(dim=1).tolist()) == [0, 1, 2]                 # by a prototype of its own


def test_prototypes_start_at_training_snippets_and_do_not_take_diffusion_gradients():
    model = _kprotodiff()
    windows = torch.randn(10, 8, 2)

    class DM:
        def train_array(self, split="train"):
            return windows.numpy()

    model.on_datamodule_ready(DM())
    bank = model.kpl.bank(0, 0).detach()                    # whole-window scale, low band
    low = model.kpl.bands(windows)[0]
    snippets = (low - low.mean(1, keepdim=True)).flatten(1)
    assert all(torch.isclose(snippets, row.flatten(), atol=1e-5).all(1).any() for row in bank)
    model.zero_grad()
    model.diffusion_loss(windows, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in model.kpl.parameters())
    model.kpl.loss(windows)["total"].backward()
    assert all(p.grad is not None for p in model.kpl.parameters())


# ---------------------------------------------------------------- Reflection Sampling
@pytest.mark.parametrize("base, plain", [("ddpm", "ddpm"), ("ddim", "ddim")])
def test_reflection_with_lambda_zero_is_the_base_solver(base, plain):
    model = _kprotodiff().eval()
    ref = DiffusionSampler(model, solver=plain, solver_kwargs={"eta": 0.5} if base == "ddim" else None, progress=False)
    refl = DiffusionSampler(model, solver=partial(reflection, base=base, fraction=0.0, pull=0.5,
                                                  **({"eta": 0.5} if base == "ddim" else {})), progress=False)
    a, b = ref.sample(3, 6, seed=4), refl.sample(3, 6, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert refl.last_stats.network_evaluations == ref.last_stats.network_evaluations == 6


def test_reflection_costs_its_extra_evaluations_and_pulls_toward_the_prototypes():
    model = _kprotodiff().eval()
    solver = partial(reflection, fraction=0.5, repeats=2)
    s = DiffusionSampler(model, solver=partial(solver, pull=0.0), progress=False)
    plain = s.sample(3, 9, seed=1)
    assert s.last_stats.network_evaluations == 9 + extra_evaluations(9, 0.5, 2) == 9 + 2 * 4
    assert not torch.equal(plain, DiffusionSampler(model, solver="ddpm", progress=False).sample(3, 9, seed=1))
    pulled = DiffusionSampler(model, solver=partial(solver, pull=1.0), progress=False).sample(3, 9, seed=1)
    assert not torch.equal(plain, pulled) and torch.isfinite(pulled).all()
    # a model without prototypes (Diffusion-TS) is reflected without a pull: pull changes nothing
    dts = DiffusionTS(2, 8, net=_net(), schedule=CosineSchedule(20), ema_decay=None).eval()
    runs = [DiffusionSampler(dts, solver=partial(solver, pull=p), progress=False).sample(3, 9, seed=1) for p in (0.0, 1.0)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="fraction"):
        DiffusionSampler(dts, solver=partial(reflection, fraction=1.5), progress=False).sample(1, 3, seed=0)


# ---------------------------------------------------------------- systems and data
def test_systems_reject_bad_arguments_with_one_line_errors():
    with pytest.raises(ValueError, match="n_channels and max_len"):
        DiffusionTS(net=_net())
    with pytest.raises(ValueError, match="loss must be"):
        DiffusionTS(2, 8, net=_net(), loss="huber")
    with pytest.raises(ValueError, match="prototypes="):
        KProtoDiff(2, 8, net=_net())
    with pytest.raises(ValueError, match="context_dim"):
        KProtoDiff(2, 8, net=DiffusionTSNet(2, 8, **TINY_NET), prototypes=partial(KeyPrototypes, n_prototypes=2))


def test_sines_are_seeded_diffusion_ts_sines_and_forecast_windows_read_the_forecasting_layout(tmp_path):
    from tsdiff.data.unconditional import CSVWindowsDataModule, SinesDataModule, make_sines

    a = make_sines(50, 24, 5, seed=1)
    assert a.shape == (50, 24, 5) and np.array_equal(a, make_sines(50, 24, 5, seed=1))
    phase = np.arcsin(a[:, 0])  # t = 0: sin(phi), phi ~ U(0, 0.1)
    assert phase.min() >= 0 and phase.max() <= 0.1 + 1e-6
    dm = SinesDataModule(n_samples=40, scaling="minmax", seed=0)
    dm.setup()
    train = dm.train_array()
    assert train.shape[1:] == (24, 5) and train.min() == pytest.approx(-1) and train.max() == pytest.approx(1)
    rows = "\n".join(f"2020-01-01 {h:02d}:00:00,{h},{2 * h % 7}" for h in range(24)) + "\n"
    rows += "\n".join(f"2020-01-02 {h:02d}:00:00,{24 + h},{h % 5}" for h in range(24))
    (tmp_path / "toy.csv").write_text("date,a,b\n" + rows + "\n")
    dm = CSVWindowsDataModule(data_dir=str(tmp_path), filename="toy.csv", seq_len=4, scaling="minmax", num_blocks=4)
    dm.prepare_data()
    dm.setup()
    assert dm.dataset_name == "toy" and dm.train_array().shape[1:] == (4, 2) and dm.channel_names == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="kaggle_slug"):
        CSVWindowsDataModule(data_dir=str(tmp_path), filename="missing.csv").prepare_data()


def test_preconditioning_keeps_the_input_at_low_noise_and_the_mean_at_high_noise():
    torch.manual_seed(0)
    model = DiffusionTS(2, 8, net=_net(), schedule=CosineSchedule(50), ema_decay=None, precondition=True).eval()
    windows = 0.3 + 0.5 * torch.randn(200, 8, 2)
    model.fit_data_stats(windows)
    torch.testing.assert_close(model.data_mean, windows.mean(0))
    x = windows[:4]
    with torch.no_grad():
        low = model.denoise(x, torch.zeros(4))
        high = model.denoise(torch.randn(4, 8, 2), torch.full((4,), 49.0))
    assert (low - x).abs().max() < 0.1                    # c_skip -> 1, c_out -> 0
    assert (high - model.data_mean).abs().max() < 0.6     # c_skip -> 0: the mean plus a bounded network term
    loss = model.diffusion_loss(windows[:16], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0


# ---------------------------------------------------------------- per-sample prototype codes
def test_prototype_codes_condition_the_denoiser_and_their_prior_is_the_training_frequency():
    model = _kprotodiff()                                   # 2 bands x 2 prototypes: 4 joint codes
    windows = torch.randn(12, 8, 2)
    codes = model.kpl.codes(windows, model.code_scales)
    assert codes.shape == (12, 2) and codes.min() >= 0 and codes.max() < 2
    # the codes reach the network: different codes, different predictions; -1 / None is the null code
    with torch.no_grad():
        model.net.context_cond[-1].weight.normal_()         # as after training (zero at init)
        x, t = torch.randn(2, 8, 2), torch.tensor([5, 5])
        a = model.denoise(x, t, torch.tensor([[0, 0], [0, 0]]))
        b = model.denoise(x, t, torch.tensor([[1, 0], [1, 0]]))
        null = model.denoise(x, t, None)
        torch.testing.assert_close(model.denoise(x, t, torch.tensor([[-1, 0], [0, -1]])), null)
    assert (a - b).abs().max() > 1e-4 and (a - null).abs().max() > 1e-4
    # training counts the codes into the prior (every row once, decayed) and drops a share to the null code
    model.train()
    model.hparams.code_dropout = 0.5
    used = model.training_condition(windows, torch.Generator().manual_seed(0))
    assert float(model.code_counts.sum()) == pytest.approx(12)
    assert ((used == -1).all(1) | (used == codes).all(1)).all() and 0 < int((used[:, 0] == -1).sum()) < 12
    model.code_counts.zero_()
    model.code_counts[3] = 5.0                              # only joint code 3 = (1, 1) was seen
    drawn = model.draw_condition(6, torch.Generator().manual_seed(0))
    assert drawn.tolist() == [[1, 1]] * 6
    with pytest.raises(ValueError, match="prototype codes"):
        model.context(torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="include 1"):
        KProtoDiff(2, 8, net=_net(), prototypes=partial(KeyPrototypes, n_prototypes=2, segments=[2, 4]))


def test_guidance_on_the_code_extrapolates_from_the_null_code_and_zero_is_plain():
    model = _kprotodiff().eval()
    with torch.no_grad():
        model.net.context_cond[-1].weight.normal_()
        x, t, codes = torch.randn(3, 8, 2), torch.tensor([2, 9, 15]), torch.tensor([[0, 1], [1, 1], [1, 0]])
        coded, null = model.denoise(x, t, codes), model.denoise(x, t, None)
        model.guidance_scale = 1.5
        torch.testing.assert_close(model.denoise(x, t, codes), coded + 1.5 * (coded - null))
        torch.testing.assert_close(model.denoise(x, t, None), null)        # nothing to guide toward
        model.guidance_scale = 0
        torch.testing.assert_close(model.denoise(x, t, codes), coded, rtol=0, atol=0)
    assert "guidance_scale" in model.sampling_settings
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        model.guidance_scale = -0.5


def test_sampler_draws_the_codes_from_the_seed():
    model = _kprotodiff().eval()
    model.code_counts.copy_(torch.tensor([1.0, 0.0, 3.0, 2.0]))
    with torch.no_grad():
        model.net.context_cond[-1].weight.normal_()
    drawn, draw = [], model.draw_condition
    model.draw_condition = lambda n, generator=None: drawn.append(draw(n, generator)) or drawn[-1]
    s = DiffusionSampler(model, solver="ddpm", progress=False, sample_batch_size=2)
    a, b = s.sample(5, 4, seed=3), s.sample(5, 4, seed=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [len(c) for c in drawn] == [2, 2, 1] * 2 and all(not (c == torch.tensor([1, 0])).all(1).any() for c in drawn)  # (1, 0) unseen
    drawn.clear()
    s.sample(5, 4, seed=3, cond=torch.zeros(5, 2, dtype=torch.long))    # a caller's cond: nothing drawn
    assert drawn == []


def test_multi_scale_codes_place_each_snippet_prototype_in_time_and_draw_from_banked_training_codes():
    model = KProtoDiff(2, 8, net=_net(), schedule=CosineSchedule(20), ema_decay=None, code_segments=[1, 4], prior_bank=5,
                       prototypes=partial(KeyPrototypes, n_prototypes=2, segments=[1, 2, 4]))
    windows = torch.randn(12, 8, 2)
    codes = model.kpl.codes(windows, model.code_scales)
    assert codes.shape == (12, 2 * (1 + 4))                                  # 2 bands x (1 whole + 4 quarters)
    assert [off for _, _, off, _ in model.code_layout] == [0, 0, 2, 4, 6] * 2
    # a quarter's token holds its prototype at its own two time steps (x 2 channels), zero elsewhere
    tokens = model.context(codes[:3])
    assert tokens.shape == (3, 10, model.kpl.placed_token_dim)
    bank, i, off, _ = model.code_layout[3]                                       # band 0, third quarter
    proto = model.kpl.unit_prototypes(0, 2)[codes[0, 3]]
    torch.testing.assert_close(tokens[0, 3, off * 2:(off + 2) * 2], proto)
    assert tokens[0, 3, :off * 2].abs().sum() == 0 and tokens[0, 3, (off + 2) * 2:16].abs().sum() == 0
    # training writes the codes into a ring buffer; the prior draws only banked rows, the same for the same seed
    model.train()
    model.hparams.code_dropout = 0.0
    model.training_condition(windows[:4])
    model.training_condition(windows[4:7])
    assert int(model.code_bank_seen) == 7
    torch.testing.assert_close(model.code_bank.long(), torch.cat([codes[5:7], codes[2:5]]))   # slots 0-1 overwritten
    model.fill_code_bank(windows[:3])                                         # when training ends: the training windows
    drawn = model.draw_condition(20, torch.Generator().manual_seed(1))
    assert all((row == codes[:3]).all(1).any() for row in drawn)
    torch.testing.assert_close(drawn, model.draw_condition(20, torch.Generator().manual_seed(1)))
    model.fill_code_bank(windows)                                             # more windows than the bank: a seeded subset
    assert int(model.code_bank_seen) == 5 and all((row == codes).all(1).any() for row in model.code_bank.long())
    with pytest.raises(ValueError, match=r"code_segments \[3\]"):
        KProtoDiff(2, 8, net=_net(), code_segments=[3], prototypes=partial(KeyPrototypes, n_prototypes=2, segments=[1, 2]))


def test_channelwise_prototypes_code_each_channel_and_its_token_sits_in_that_channel_only():
    gen = torch.Generator().manual_seed(0)
    kpl = KeyPrototypes(3, 8, n_prototypes=2, segments=[1, 2], band_edges=[], channelwise=True)
    x = torch.randn(4, 8, 3, generator=gen)
    assert kpl.bank(0, 0).shape == (2, 8, 1) and kpl.token_dim == 8 + 2
    # with two prototypes equal to a window's own channel shapes, reconstruction of that window is exact
    shape = (x[0] - x[0].mean(0)).T                                              # (3, 8): channel shapes
    with torch.no_grad():
        kpl.bank(0, 0).copy_(shape[:2].unsqueeze(-1))
    kpl.temperature = 1e-4
    rec = kpl.reconstruct(x[:1])[0, 0]
    torch.testing.assert_close(rec[:, :2], x[0, :, :2], atol=1e-4, rtol=0)
    model = KProtoDiff(3, 8, net=_net(), schedule=CosineSchedule(20), ema_decay=None, code_segments=[1],
                       prototypes=partial(KeyPrototypes, n_prototypes=2, segments=[1, 2], band_edges=[], channelwise=True))
    codes = model.kpl.codes(x, model.code_scales)
    assert codes.shape == (4, 3) and model.code_layout == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2)]
    tokens = model.context(codes).view(4, 3, -1)[..., :24].reshape(4, 3, 8, 3)  # placed shapes (L, C) per position
    for c in range(3):
        torch.testing.assert_close(tokens[0, c, :, c], model.kpl.unit_prototypes(0, 0)[codes[0, c]])
        assert tokens[0, c, :, [o for o in range(3) if o != c]].abs().sum() == 0
    assert not model.whole_window_code and model.draw_condition(5, torch.Generator().manual_seed(0)).shape == (5, 3)
    with pytest.raises(ValueError, match="channelwise must be true or false"):
        KeyPrototypes(3, 8, channelwise="yes")


def test_calibrated_pull_target_shrinks_only_residuals_larger_than_real_windows():
    model = _kprotodiff()
    windows = torch.randn(20, 8, 2)
    recon = model.kpl.project(windows)
    torch.testing.assert_close(model.project_x0(windows), recon)            # uncalibrated: the reconstruction
    level = model.calibrate(windows)
    shares = model._residual_share(windows, recon)
    assert level == pytest.approx(float(shares.mean()), rel=1e-5)
    target = model.project_x0(windows)
    low = shares <= level
    assert low.any() and (~low).any()
    torch.testing.assert_close(target[low], windows[low])                   # as prototype-like as real data: kept
    hi = windows[~low]                                                      # the rest: residual = level x own variance
    var = (hi - hi.mean(1, keepdim=True)).pow(2).sum((1, 2))
    torch.testing.assert_close((target[~low] - recon[~low]).pow(2).sum((1, 2)) / var, torch.full_like(var, level))
