"""The shared EMA callback inside a real Lightning fit: the average it keeps, what checkpoints hold, resume."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from tsdiff.models.callbacks import EMA


class _Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Record(pl.Callback):
    """Live weights after every optimizer step (listed before EMA, so it sees them before any swap)."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []
        self.validated: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({k: p.detach().clone() for k, p in pl_module.named_parameters()})

    def on_validation_epoch_end(self, trainer, pl_module):  # before EMA swaps back: what ValForecastMSE relies on
        if not trainer.sanity_checking:
            self.validated.append(pl_module.net[0].weight.detach().clone())


class _SaveEveryEpoch(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(str(self.folder / f"epoch{trainer.current_epoch}.ckpt"))

    def on_fit_end(self, trainer, pl_module):
        trainer.save_checkpoint(str(self.folder / "end.ckpt"))


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path, callbacks, epochs):
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path), accelerator="cpu")


def test_ema_average_checkpoints_and_resume(tmp_path):
    torch.manual_seed(0)
    model, record, decay = _Regression(), _Record(), 0.8
    ema = EMA(decay)
    trainer = _trainer(tmp_path, [_SaveEveryEpoch(tmp_path), record, ema], epochs=2)
    trainer.fit(model, _loader(), _loader())
    expected = dict(record.weights[0])  # starts at the weights of the first step
    for weights in record.weights[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * w for k, w in weights.items()}
    for name, p in model.named_parameters():  # training ends with the averaged weights in the module
        assert torch.allclose(p, expected[name], atol=1e-6), name
    assert torch.allclose(record.validated[-1], expected["net.0.weight"], atol=1e-6)  # validation scored the average
    mid = torch.load(tmp_path / "epoch0.ckpt", weights_only=True)
    assert "current_model_state" in mid and "averaging_state" in mid  # live and averaged weights, resumable
    assert not torch.equal(mid["state_dict"]["net.0.weight"], mid["current_model_state"]["net.0.weight"])
    end = torch.load(tmp_path / "end.ckpt", weights_only=True)
    assert "current_model_state" not in end and torch.equal(end["state_dict"]["net.0.weight"], model.net[0].weight)

    resumed, ema2 = _Regression(), EMA(decay)
    _trainer(tmp_path / "resume", [ema2], epochs=2).fit(resumed, _loader(), _loader(), ckpt_path=str(tmp_path / "epoch0.ckpt"),
                                                         weights_only=True)
    for name, p in resumed.named_parameters():  # the second epoch replayed from the checkpoint: same average
        assert torch.allclose(p, expected[name], atol=1e-5), name
