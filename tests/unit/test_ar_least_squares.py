"""TimeDiff's AR model fitted in closed form (``ar_fit="ridge"``): the exact minimiser of the pretraining loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsdiff.models.baselines import ARForecaster, SeasonalNaive, evaluate_point_model, fit_ar_least_squares
from tsdiff.models.callbacks import ARPretraining, pretrain_ar
from tsdiff.nets.baselines import ARLinear, instance_normalize
from test_timediff_model import C, H, L, _FakeTrainer, _TinyDM, sine_batches, tiny


def _normalized_arrays(batches, eps=1e-3):
    lookback = torch.cat([b["lookback"] for b in batches]).double()
    future = torch.cat([b["future"] for b in batches]).double()
    x, mean, std = instance_normalize(lookback, eps)
    return x.numpy(), ((future - mean) / std).numpy()


def test_ridge_zero_is_the_least_squares_solution_per_variable():
    batches = sine_batches(4)
    net = ARLinear(C, L, H)
    info = fit_ar_least_squares(net, batches, ridge=0.0)
    x, y = _normalized_arrays(batches)
    for c in range(C):
        x1 = np.concatenate([x[:, :, c], np.ones((len(x), 1))], 1)
        w, *_ = np.linalg.lstsq(x1, y[:, :, c], rcond=None)
        pred = x1 @ w
        ours = np.einsum("bl,lh->bh", x[:, :, c], net.weight.detach().double()[:, c].numpy()) + net.bias.detach().double()[:, c].numpy()
        np.testing.assert_allclose(ours, pred, atol=1e-4)  # same fit (the minimiser's predictions are unique)
    assert info["train_mse"] == pytest.approx(evaluate_point_model(net, batches, loss_space="normalized", eps=1e-3), rel=1e-4)
    adam = tiny()
    history = pretrain_ar(adam, batches, epochs=10, lr=1e-2)
    assert info["train_mse"] <= history["train_loss"][-1]  # the closed form is the minimum Adam only approaches


def test_a_ridge_list_is_chosen_on_validation_windows():
    train, val = sine_batches(2, batch=8, seed=0), sine_batches(2, seed=1)  # 16 windows < L + 1 unknowns: ridge matters
    info = fit_ar_least_squares(ARLinear(C, L, H), train, [0.0, 0.1, 10.0], val_loader=val)
    for r, v in info["val_mse_by_ridge"].items():  # the val MSE from the normal equations is the real one
        net = ARLinear(C, L, H)
        fit_ar_least_squares(net, train, r)
        assert v == pytest.approx(evaluate_point_model(net, val, loss_space="normalized", eps=1e-3), rel=1e-4)
    assert info["ridge"] == min(info["val_mse_by_ridge"], key=info["val_mse_by_ridge"].get)
    with pytest.raises(ValueError, match="val_loader"):
        fit_ar_least_squares(ARLinear(C, L, H), train, [0.1, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        fit_ar_least_squares(ARLinear(C, L, H), train, -1.0)
    with pytest.raises(ValueError, match="non-empty loader"):
        fit_ar_least_squares(ARLinear(C, L, H), [], 0.1)


def test_pretraining_callback_and_baseline_use_the_ridge_fit():
    model = tiny(ar_fit="ridge", ar_ridge=[0.01, 1.0])
    callback = ARPretraining(fit="ridge", ridge=[0.01, 1.0])
    callback.on_fit_start(_FakeTrainer(datamodule=_TinyDM()), model)  # val loader from the datamodule
    assert bool(model.ar_pretrained)
    baseline = ARForecaster(fit="ridge", ridge=[0.01, 1.0]).fit(_TinyDM())
    assert torch.allclose(baseline.net.weight, model.ar_model.weight)  # the AR baseline is TimeDiff's M_ar
    lookback, future = (_TinyDM().val_dataloader()[0][k].numpy() for k in ("lookback", "future"))
    naive_mse = float(np.mean((SeasonalNaive().fit(_TinyDM()).predict(lookback) - future) ** 2))
    assert float(np.mean((baseline.predict(lookback) - future) ** 2)) < naive_mse
    names = [type(cb).__name__ for cb in model.configure_callbacks()]
    assert names[0] == "ARPretraining" and model.configure_callbacks()[0].fit == "ridge"


def test_unknown_ar_fit_is_refused():
    for build in (lambda: tiny(ar_fit="sgd"), lambda: ARPretraining(fit="sgd"), lambda: ARForecaster(fit="sgd")):
        with pytest.raises(ValueError, match="sgd"):
            build()


def test_a_hydra_ridge_list_is_kept_as_plain_floats():
    from omegaconf import OmegaConf  # noqa: PLC0415

    model = tiny(ar_fit="ridge", ar_ridge=OmegaConf.create([0.1, 1]))  # what instantiate passes from the config
    assert type(model.hparams.ar_ridge) is list and model.hparams.ar_ridge == [0.1, 1.0]  # loadable with weights_only
