"""The TimeDiff system: future mixup only in training, AR pretraining, denoiser contract, forecasting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from functools import partial

from tsdiff.diffusion.schedules import CosineSchedule
from tsdiff.models.baselines import ARForecaster, DLinearForecaster, SeasonalNaive, fit_point_model
from tsdiff.models.callbacks import EMA, ARPretraining, RestoreBestWeights, ValForecastMSE, pretrain_ar
from tsdiff.models.timediff import TimeDiff, mixup_mask
from tsdiff.nets.baselines import ARLinear
from tsdiff.nets.timediff import condition_network, denoising_network, draw_channels
from tsdiff.sampling.forecast import sample_forecasts

L, H, C = 12, 4, 2
LAST = "denoiser.decoder.2.weight"  # the decoder's final convolution (2 blocks, then the conv)


def tiny(n_channels: int = C, dropout: float = 0.1, channel_independent: bool = False, **kw) -> TimeDiff:
    """A tiny TimeDiff with the networks the config builds (width 8, K = 10)."""
    nets = dict(hidden=8, dropout=dropout, channel_independent=channel_independent)
    return TimeDiff(L, H, n_channels, condition_net=partial(condition_network, n_blocks=2, **nets),
                    denoiser=partial(denoising_network, step_sinusoid_dim=8, step_hidden_dim=8, **nets),
                    ar_model=ARLinear, schedule=CosineSchedule(10, beta_start=1e-4, beta_end=0.1),
                    channel_independent=channel_independent, **kw)


def sine_batches(n_batches: int = 4, batch: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L + H, dtype=torch.float32)
    out = []
    for _ in range(n_batches):
        phase = torch.rand(batch, 1, C, generator=g) * 6.28
        level = torch.randn(batch, 1, C, generator=g)
        x = level + torch.sin(0.5 * t.reshape(1, -1, 1) + phase) + 0.05 * torch.randn(batch, L + H, C, generator=g)
        out.append({"lookback": x[:, :L], "future": x[:, L:]})
    return out


class _TinyDM:
    """The datamodule surface the baselines use, over fixed sine batches."""

    lookback, horizon, n_channels = L, H, C

    def __init__(self):
        self._train, self._val = sine_batches(6, seed=0), sine_batches(2, seed=1)

    def train_dataloader(self):
        return self._train

    def val_dataloader(self):
        return self._val


def test_future_mixup_only_in_training():
    model = tiny(dropout=0.0)
    b = sine_batches(1)[0]
    lb_n, mean, std = model.normalize(b["lookback"])
    fut_n = (b["future"] - mean) / std
    model.train()
    f_train = model.condition_net(lb_n)
    c_train = model.condition(lb_n, fut_n, torch.Generator().manual_seed(3))
    m = torch.rand(f_train.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(c_train[..., :C], m * f_train + (1 - m) * fut_n, atol=1e-6)  # eq. (14)
    assert c_train.shape == (16, H, 2 * C)
    model.eval()
    c_eval = model.condition(lb_n, fut_n)  # the future is ignored at inference (eq. 15)
    assert torch.allclose(c_eval[..., :C], model.condition_net(lb_n))
    assert torch.allclose(c_eval[..., C:], model.ar_model(lb_n))


def test_mixup_switch_off_and_ar_off_change_the_condition():
    model = tiny(dropout=0.0, future_mixup=False, use_ar=False)
    b = sine_batches(1)[0]
    lb_n, mean, std = model.normalize(b["lookback"])
    model.train()
    c = model.condition(lb_n, (b["future"] - mean) / std)
    assert model.ar_model is None and c.shape == (16, H, C)  # c = F(x) when both are off (Table 4)
    assert torch.allclose(c, model.condition_net(lb_n))


@pytest.mark.parametrize("kind", ["hard", "segment"])
def test_binary_mixup_masks_keep_a_share_tau_of_f(kind):
    m = mixup_mask((64, 200, 4), kind, tau=0.7, generator=torch.Generator().manual_seed(0))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(m.mean()) - 0.7) < 0.05
    if kind == "segment":  # kept-F runs have mean length ~3 (geometric), unlike i.i.d. hard masks
        flat = m[:, :, 0].flatten().numpy()
        starts = np.sum((flat[1:] == 1) & (flat[:-1] == 0))
        assert 2.0 < flat.sum() / max(starts, 1) < 4.5
    soft = mixup_mask((2, 3, 4), "soft", generator=torch.Generator().manual_seed(0))
    assert float(soft.min()) >= 0.0 and float(soft.max()) < 1.0
    with pytest.raises(ValueError, match="mixup_tau"):
        mixup_mask((1, 2, 1), "hard", tau=1.0)


def test_ar_pretraining_reduces_its_loss_and_runs_once():
    model = tiny()
    history = pretrain_ar(model, sine_batches(4), epochs=10, lr=1e-2)
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert bool(model.ar_pretrained)
    before = model.ar_model.weight.detach().clone()
    ARPretraining(epochs=5).on_fit_start(_FakeTrainer(datamodule=_TinyDM()), model)  # already pretrained: no second run
    assert torch.equal(before, model.ar_model.weight)
    fresh = tiny()
    callback = ARPretraining(epochs=2, lr=1e-2)
    callback.on_fit_start(_FakeTrainer(datamodule=_TinyDM()), fresh)  # at fit start, on the datamodule's train loader
    assert bool(fresh.ar_pretrained) and callback.seconds > 0
    assert not torch.equal(fresh.ar_model.weight, tiny().ar_model.weight)


def test_frozen_ar_stays_frozen_after_pretraining():
    model = tiny(freeze_ar=True)
    pretrain_ar(model, sine_batches(1), epochs=1)
    assert not any(p.requires_grad for p in model.ar_model.parameters())
    assert all(p.requires_grad for p in model.denoiser.parameters())


@pytest.mark.parametrize("parameterization", ["x0", "eps"])
def test_loss_backward_and_target(parameterization):
    model = tiny(parameterization=parameterization)
    model.train()
    loss = model.diffusion_loss(sine_batches(1)[0], torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and model.denoiser.decoder[-1].weight.grad is not None
    assert model.parameterization == parameterization


def test_denoiser_contract_and_forecast_shapes():
    model = tiny()
    assert model.sample_shape == (H, C) and model.schedule.num_timesteps == 10
    with pytest.raises(TypeError, match="conditional"):
        model.denoise(torch.randn(1, H, C), torch.tensor([0]), None)
    lookback = sine_batches(1, batch=3)[0]["lookback"]
    for solver, steps in (("dpm_solver++", 5), ("ddpm", None)):
        samples, stats = sample_forecasts(model, lookback, num_samples=4, solver=solver, steps=steps, seed=1, return_stats=True)
        assert samples.shape == (4, 3, H, C) and torch.isfinite(samples).all()
        assert stats.network_evaluations == (5 if steps else 10)
    again = sample_forecasts(model, lookback, num_samples=4, solver="ddpm", seed=1)
    assert torch.equal(again, sample_forecasts(model, lookback, num_samples=4, solver="ddpm", seed=1))
    assert model.training  # forecast restores the mode it found


def test_forecast_denormalizes_with_the_lookback_statistics():
    model = tiny()
    lookback = sine_batches(1, batch=2)[0]["lookback"]
    shifted = sample_forecasts(model, lookback + 100.0, num_samples=2, solver="dpm_solver++", steps=3, seed=0)
    base = sample_forecasts(model, lookback, num_samples=2, solver="dpm_solver++", steps=3, seed=0)
    assert torch.allclose(shifted, base + 100.0, atol=1e-3)  # instance norm: a level shift passes through


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="model_kwargs"):
        TimeDiff(horizon=4, n_channels=2)
    with pytest.raises(ValueError, match="Table 6"):
        tiny(parameterization="v")
    with pytest.raises(ValueError, match="mixup"):
        tiny(mixup="cutmix")
    model = tiny()
    with pytest.raises(ValueError, match="do not match the model"):
        model.diffusion_loss({"lookback": torch.randn(2, L + 1, C), "future": torch.randn(2, H, C)})
    with pytest.raises(TypeError, match="lookback"):
        model.diffusion_loss({"x": torch.randn(2, L, C)})
    with pytest.raises(ValueError, match=r"\(N, 12, 2\)"):
        sample_forecasts(model, torch.randn(2, L, C + 1))
    with pytest.raises(ValueError, match="networks"):
        TimeDiff(L, H, C, denoiser=partial(denoising_network, hidden=8))
    with pytest.raises(ValueError, match="unknown TimeDiff arguments"):
        tiny(hiden=8)
    with pytest.raises(ValueError, match="before the networks were injected"):
        tiny(num_timesteps=10, default_solver="ddpm")  # an old run's flat config


def test_seasonal_naive_repeats_the_last_season():
    x = np.arange(12, dtype=np.float32).reshape(1, 12, 1)
    dm = _TinyDM()
    pred = SeasonalNaive(season_length=3).fit(dm).predict(x)
    assert pred[0, :, 0].tolist() == [9, 10, 11, 9]
    assert SeasonalNaive().fit(dm).predict(x)[0, :, 0].tolist() == [11] * 4
    with pytest.raises(ValueError, match="exceeds the lookback"):
        SeasonalNaive(season_length=L + 1).fit(dm)


def test_linear_baselines_fit_and_predict():
    dm = _TinyDM()
    lookback = dm.val_dataloader()[0]["lookback"].numpy()
    future = dm.val_dataloader()[0]["future"].numpy()
    naive_mse = float(np.mean((SeasonalNaive().fit(dm).predict(lookback) - future) ** 2))
    for forecaster in (ARForecaster(epochs=15, lr=1e-2), DLinearForecaster(epochs=15, lr=1e-2, patience=15)):
        pred = forecaster.fit(dm).predict(lookback)
        assert pred.shape == future.shape
        assert float(np.mean((pred - future) ** 2)) < naive_mse  # a sine is linearly predictable
    with pytest.raises(RuntimeError, match="fit"):
        ARForecaster().predict(lookback)


def test_fit_point_model_validates_arguments():
    with pytest.raises(ValueError, match="loss_space"):
        fit_point_model(torch.nn.Linear(1, 1), [], epochs=1, loss_space="latent")


def test_ar_skip_with_zero_init_starts_at_the_ar_forecast():
    """ar_skip: F = z_ar + F_net; zero_init: F_net = 0 and decoder = 0, so z_mix = z_ar = x_theta."""
    model = tiny(ar_skip=True, zero_init=True).eval()
    lookback = sine_batches(1, batch=3)[0]["lookback"]
    normed, mean, std = model.normalize(lookback)
    c = model.condition(normed)
    z_ar = model.ar_model(normed)
    assert torch.equal(c[..., :C], z_ar) and torch.equal(c[..., C:], z_ar)
    samples = sample_forecasts(model, lookback, num_samples=2, solver="dpm_solver++", steps=4, seed=0)
    assert torch.allclose(samples, (z_ar * std + mean).expand_as(samples), atol=1e-4)
    plain = tiny(zero_init=True).eval()  # paper layout: z_mix = F_net alone (zero here), z_ar apart
    c_plain = plain.condition(plain.normalize(lookback)[0])
    assert torch.equal(c_plain[..., :C], torch.zeros(3, H, C))
    assert not torch.equal(c_plain[..., C:], torch.zeros(3, H, C))


def test_ar_skip_future_mixup_mixes_the_refined_forecast():
    model = tiny(ar_skip=True, zero_init=True).train()
    batch = sine_batches(1, batch=2)[0]
    normed, mean, std = model.normalize(batch["lookback"])
    future_n = (batch["future"] - mean) / std
    gen = torch.Generator().manual_seed(3)
    c = model.condition(normed, future_n, gen)
    m = mixup_mask((2, H, C), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(c[..., :C], m * model.ar_model(normed) + (1 - m) * future_n, atol=1e-6)


class _FakeTrainer:
    sanity_checking = False
    current_epoch = 0

    def __init__(self, datamodule=None, global_step=0, **metrics):
        self.datamodule, self.global_step = datamodule, global_step
        self.callback_metrics = {k: torch.tensor(v) for k, v in metrics.items()}


def _ema_step(ema: EMA, model: TimeDiff, step: int) -> None:
    ema.on_train_batch_end(_FakeTrainer(global_step=step), model, None, None, step - 1)


def test_ema_tracks_swaps_and_restores_the_weights():
    """The shared EMA callback (Lightning WeightAveraging): starts at the weights of the first step, then
    ema <- d ema + (1 - d) w; validation sees the averaged weights, training the live ones."""
    model = tiny()
    ema = EMA(0.5)
    ema.setup(_FakeTrainer(), model, "fit")
    w = model.denoiser.decoder[-1].weight
    start = w.detach().clone()
    _ema_step(ema, model, 1)  # starts at the current weights
    with torch.no_grad():
        w.add_(2.0)
    _ema_step(ema, model, 2)
    expected = start + 1.0  # 0.5 * start + 0.5 * (start + 2)
    assert torch.allclose(ema.averaged_state_dict(model)[LAST], expected)
    ema.on_validation_epoch_start(_FakeTrainer(), model)
    assert torch.allclose(w, expected)
    ema.on_validation_epoch_end(_FakeTrainer(), model)
    assert torch.allclose(w, start + 2.0)  # live weights back
    assert torch.equal(model.state_dict()["ar_pretrained"], ema.averaged_state_dict(model)["ar_pretrained"])  # buffers follow
    warm = EMA(0.999, warmup=True)
    assert warm.decay_at(1) == pytest.approx(3 / 12) and warm.decay_at(10**6) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="ema_decay"):
        tiny(ema_decay=1.0)


def test_best_weights_callback_keeps_and_loads_the_ema_weights():
    """The weights scored by validation and used for sampling afterwards are the averaged ones."""
    model = tiny(ema_decay=0.5, select_by="val_forecast")
    assert model.selection_metric == "val/forecast_mse"
    ema = EMA(0.5)
    ema.setup(_FakeTrainer(), model, "fit")
    w = model.denoiser.decoder[-1].weight
    _ema_step(ema, model, 1)
    with torch.no_grad():
        w.add_(2.0)
    _ema_step(ema, model, 2)
    averaged = ema.averaged_state_dict(model)[LAST].clone()
    cb = RestoreBestWeights(model.selection_metric, ema=ema)
    cb.on_validation_end(_FakeTrainer(**{"val/forecast_mse": 0.3}), model)
    with torch.no_grad():
        w.add_(5.0)  # later, worse epoch
    _ema_step(ema, model, 3)
    cb.on_validation_end(_FakeTrainer(**{"val/forecast_mse": 0.4}), model)
    ema.on_train_end(_FakeTrainer(), model)  # the final averaged weights ...
    assert not torch.allclose(w, averaged)
    cb.on_train_end(_FakeTrainer(), model)  # ... replaced by the best-scored averaged ones
    assert torch.allclose(w, averaged)
    checkpoint = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(_FakeTrainer(), model, checkpoint)  # after training: the module's weights as they are
    assert torch.equal(checkpoint["state_dict"][LAST], w) and "current_model_state" not in checkpoint
    resumed = RestoreBestWeights(model.selection_metric)
    resumed.load_state_dict(cb.state_dict())  # a resumed run remembers the best so far
    assert resumed.best == pytest.approx(0.3) and torch.equal(resumed.state[LAST], cb.state[LAST])
    lookback = sine_batches(1, batch=2)[0]["lookback"]
    assert torch.isfinite(sample_forecasts(model, lookback, num_samples=2, steps=3, seed=0)).all()
    names = [type(c).__name__ for c in model.configure_callbacks()]
    assert names == ["ARPretraining", "ValForecastMSE", "EarlyStopping", "EMA", "RestoreBestWeights"]  # hook order matters
    callbacks = tiny(early_stopping_patience=None, use_ar=False).configure_callbacks()
    assert [type(c).__name__ for c in callbacks] == ["RestoreBestWeights"]
    with pytest.raises(ValueError, match="select_by"):
        tiny(select_by="train_loss")


def test_validation_forecast_mse_is_the_sample_mean_error():
    model = tiny(ar_skip=True, zero_init=True)
    batch = sine_batches(1, batch=3)[0]
    got, crps = ValForecastMSE(samples=2, steps=10).forecast_scores(model, batch["lookback"], batch["future"])
    normed, mean, std = model.normalize(batch["lookback"])
    ar = model.ar_model(normed).detach() * std + mean  # the untrained model forecasts z_ar
    assert got == pytest.approx(float(((ar - batch["future"]) ** 2).mean()), rel=1e-3)
    # two (near-)identical samples: the fair CRPS is the MAE of the point forecast
    assert crps == pytest.approx(float((ar - batch["future"]).abs().mean()), rel=1e-2)



def test_channel_independent_model_trains_on_channel_subsets_and_forecasts_every_variable():
    torch.manual_seed(0)
    model = tiny(3, channel_independent=True, ci_channels_per_step=2, ar_skip=True, zero_init=True)
    n_mv = sum(p.numel() for p in tiny(3, ar_skip=True).parameters())
    assert sum(p.numel() for p in model.parameters()) < n_mv  # univariate F and denoiser
    g = torch.Generator().manual_seed(0)
    channels = draw_channels(5, 3, model.hparams.ci_channels_per_step, g)
    assert channels.shape == (5, 2) and all(len(set(row.tolist())) == 2 for row in channels)
    batch = {"lookback": torch.randn(5, L, 3), "future": torch.randn(5, H, 3)}
    loss = model.diffusion_loss(batch, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.ar_model.weight.grad is not None
    # the AR model keeps per-variable weights: with zero_init the untrained CI model forecasts z_ar
    model.eval()
    x = torch.randn(4, L, 3)
    xn, mean, std = model.normalize(x)
    with torch.no_grad():
        c = model.condition(xn)
    assert c.shape == (4, H, 6) and torch.allclose(c[..., :3], c[..., 3:])
    out = sample_forecasts(model, x, num_samples=2, steps=3, seed=0)
    assert out.shape == (2, 4, H, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="ci_channels_per_step"):
        tiny(3, channel_independent=True, ci_channels_per_step=0)


@pytest.mark.parametrize("ci", [False, True])
def test_gaussian_skip_samples_the_gaussian_the_denoiser_emits(ci):
    model = tiny(gaussian_skip=True, ar_skip=True, zero_init=True, channel_independent=ci).eval()
    lookback = sine_batches(1, batch=4)[0]["lookback"]
    cond, stats = model.forecast_condition(lookback)
    x, t = torch.randn(4, H, C), torch.full((4,), 6)
    with torch.no_grad():
        out = model.denoise(x, t, cond)
        a, s = (v.item() for v in model.schedule.alpha_sigma(torch.tensor(6)))
    mu = cond["c"][..., :C]  # untrained: mu = z_mix = z_ar and log v = 0
    torch.testing.assert_close(out, mu + a * (x - a * mu) / (a * a + s * s))
    samples, first = sample_forecasts(model, lookback, num_samples=64, steps=10, seed=0, return_first_x0=True)
    spread = (samples.std(0) / stats[1]).mean()  # in the instance-normalized space: ~ sqrt(v) = 1
    assert 0.7 < float(spread) < 1.3
    # the first x0-predictions average to E[x0 | x^K ~ prior] = mu s^2 / (a^2 + s^2) at the noisiest step (v = 1)
    a_k, s_k = (v.item() for v in model.schedule.alpha_sigma(torch.tensor(model.schedule.num_timesteps - 1)))
    expected = model.decode_forecast((mu * s_k**2 / (a_k**2 + s_k**2))[None], stats)[0]
    noise = a_k / (a_k**2 + s_k**2) / 8  # std of the mean of 64 draws of g x^K
    assert float(((first.mean(0) - expected) / stats[1]).abs().max()) < 5 * noise
    with pytest.raises(ValueError, match="gaussian_skip"):
        tiny(gaussian_skip=True, parameterization="eps")


def test_antithetic_pairs_cancel_in_the_mean_of_a_linear_denoiser():
    # untrained Gaussian skip: x0-predictions affine in x^k, so DPM-Solver++ maps x^K affinely and every
    # antithetic pair (x^K, -x^K) averages to the same point, the forecast of x^K = 0; each sample still spreads
    model = tiny(gaussian_skip=True, ar_skip=True, zero_init=True).eval()
    lookback = sine_batches(1, batch=3)[0]["lookback"]
    kw = dict(num_samples=6, steps=5, seed=2, antithetic=True)
    samples = sample_forecasts(model, lookback, **kw)
    assert torch.equal(samples, sample_forecasts(model, lookback, **kw))
    pair_means = (samples[:3] + samples[3:]) / 2
    torch.testing.assert_close(pair_means, pair_means[:1].expand_as(pair_means), atol=1e-4, rtol=1e-4)
    assert float((samples[0] - samples[1]).abs().mean()) > 0.1
    with pytest.raises(ValueError, match="even"):
        sample_forecasts(model, lookback, num_samples=3, antithetic=True)


def test_diffused_mixup_reveals_only_the_denoisers_own_input():
    batch = sine_batches(1, batch=8)[0]
    with pytest.raises(ValueError, match="mixup_source"):
        tiny(mixup_source="noisy")
    losses = {}
    for source in ("clean", "diffused"):
        torch.manual_seed(0)
        model = tiny(mixup_source=source).train()
        losses[source] = model.diffusion_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["diffused"]) and not torch.isclose(losses["clean"], losses["diffused"])
