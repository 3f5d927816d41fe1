"""The TimeDiff system: future mixup only in training, AR pretraining, denoiser contract, forecasting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tsdiff.models.baselines import ARForecaster, DLinearForecaster, SeasonalNaive, fit_point_model
from tsdiff.models.timediff import TimeDiff, mixup_mask

L, H, C = 12, 4, 2
LAST = "denoiser.decoder.2.weight"  # the decoder's final convolution (2 blocks, then the conv)
TINY = dict(hidden=8, cond_hidden=8, step_sinusoid_dim=8, step_hidden_dim=8, num_timesteps=10)


def tiny(**kw) -> TimeDiff:
    return TimeDiff(L, H, C, **{**TINY, **kw})


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
    model = tiny(ar_lr=1e-2)
    history = model.pretrain_ar(sine_batches(4), epochs=10)
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert bool(model.ar_pretrained)
    before = model.ar_model.weight.detach().clone()
    model.on_datamodule_ready(_TinyDM())  # already pretrained: no second run
    assert torch.equal(before, model.ar_model.weight)


def test_frozen_ar_stays_frozen_after_pretraining():
    model = tiny(freeze_ar=True)
    model.pretrain_ar(sine_batches(1), epochs=1)
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
        samples, stats = model.forecast(lookback, num_samples=4, solver=solver, steps=steps, seed=1, return_stats=True)
        assert samples.shape == (4, 3, H, C) and torch.isfinite(samples).all()
        assert stats.network_evaluations == (5 if steps else 10)
    again = model.forecast(lookback, num_samples=4, solver="ddpm", seed=1)
    assert torch.equal(again, model.forecast(lookback, num_samples=4, solver="ddpm", seed=1))
    assert model.training  # forecast restores the mode it found


def test_forecast_denormalizes_with_the_lookback_statistics():
    model = tiny()
    lookback = sine_batches(1, batch=2)[0]["lookback"]
    shifted = model.forecast(lookback + 100.0, num_samples=2, solver="dpm_solver++", steps=3, seed=0)
    base = model.forecast(lookback, num_samples=2, solver="dpm_solver++", steps=3, seed=0)
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
        model.forecast(torch.randn(2, L, C + 1))


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
    samples = model.forecast(lookback, num_samples=2, solver="dpm_solver++", steps=4, seed=0)
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


def test_ema_tracks_swaps_and_restores_the_weights():
    model = tiny(ema_decay=0.5)
    model.update_ema()  # starts at the current weights
    w = model.denoiser.decoder[-1].weight
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(2.0)
    model.update_ema()
    expected = start + 1.0  # 0.5 * start + 0.5 * (start + 2)
    assert torch.allclose(model.averaged_state_dict()[LAST], expected)
    with model.ema_weights():
        assert torch.allclose(w, expected)
    assert torch.allclose(w, start + 2.0)  # live weights back
    plain = tiny()
    assert torch.equal(plain.averaged_state_dict()[LAST], plain.state_dict()[LAST])  # no EMA: plain weights
    with pytest.raises(ValueError, match="ema_decay"):
        tiny(ema_decay=1.0)


class _FakeTrainer:
    sanity_checking = False

    def __init__(self, **metrics):
        self.callback_metrics = {k: torch.tensor(v) for k, v in metrics.items()}


def test_best_weights_callback_keeps_and_loads_the_ema_weights():
    """The weights scored by validation and used for sampling afterwards are the averaged ones."""
    from tsdiff.models.timediff import _RestoreBestWeights

    model = tiny(ema_decay=0.5, select_by="val_forecast")
    assert model.selection_metric == "val/forecast_mse"
    w = model.denoiser.decoder[-1].weight
    model.update_ema()
    with torch.no_grad():
        w.add_(2.0)
    model.update_ema()
    averaged = model.averaged_state_dict()[LAST].clone()
    cb = _RestoreBestWeights(model.selection_metric)
    cb.on_validation_end(_FakeTrainer(**{"val/forecast_mse": 0.3}), model)
    with torch.no_grad():
        w.add_(5.0)  # later, worse epoch
    model.update_ema()
    cb.on_validation_end(_FakeTrainer(**{"val/forecast_mse": 0.4}), model)
    cb.on_train_end(_FakeTrainer(), model)
    assert torch.allclose(w, averaged) and model._ema is None
    lookback = sine_batches(1, batch=2)[0]["lookback"]
    with_restored = model.forecast(lookback, num_samples=2, steps=3, seed=0)
    assert torch.isfinite(with_restored).all()
    callbacks = tiny(early_stopping_patience=None).configure_callbacks()
    assert [type(c).__name__ for c in callbacks] == ["_RestoreBestWeights"]
    with pytest.raises(ValueError, match="select_by"):
        tiny(select_by="train_loss")


def test_validation_forecast_mse_is_the_sample_mean_error():
    model = tiny(ar_skip=True, zero_init=True)
    batch = sine_batches(1, batch=3)[0]
    got = model.validation_forecast_mse(batch["lookback"], batch["future"])
    normed, mean, std = model.normalize(batch["lookback"])
    ar = model.ar_model(normed).detach() * std + mean  # the untrained model forecasts z_ar
    assert got == pytest.approx(float(((ar - batch["future"]) ** 2).mean()), rel=1e-3)



def test_channel_independent_model_trains_on_channel_subsets_and_forecasts_every_variable():
    torch.manual_seed(0)
    model = TimeDiff(L, H, 3, channel_independent=True, ci_channels_per_step=2, ar_skip=True, zero_init=True, **TINY)
    n_mv = sum(p.numel() for p in TimeDiff(L, H, 3, ar_skip=True, **TINY).parameters())
    assert sum(p.numel() for p in model.parameters()) < n_mv  # univariate F and denoiser
    g = torch.Generator().manual_seed(0)
    channels = model._training_channels(5, g, torch.device("cpu"))
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
    out = model.forecast(x, num_samples=2, steps=3, seed=0)
    assert out.shape == (2, 4, H, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="ci_channels_per_step"):
        TimeDiff(L, H, 3, channel_independent=True, ci_channels_per_step=0, **TINY)
