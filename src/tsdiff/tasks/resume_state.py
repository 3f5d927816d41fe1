"""Checkpoints of a run that stopped in the middle of an epoch, so ``resume=<run_id>`` continues it exactly.

Why: when Lightning (2.6) stops inside an epoch (``trainer.max_steps`` reached, or the first Ctrl+C, which
sets ``trainer.should_stop`` after a batch) it still closes the epoch: ``on_train_epoch_end`` runs and the
epoch counter in the loop state (``epoch_progress``) counts the partial epoch as a finished one, while the
batch counter says 20 of 32 batches. The saved ``last.ckpt`` therefore held one epoch too many: a run
resumed with ``trainer.max_epochs=2`` finished the 12 remaining batches as its "second" epoch and stopped
after 32 optimizer steps instead of 64 (and an interrupted epoch-budgeted run ended a few steps short).

What :class:`MidEpochResume` does, in the train task only:

- saving: when fewer batches than an epoch's ran, the checkpoint's ``epoch_progress`` is written as
  "epoch started, not finished" (what Lightning itself saves from ``on_train_batch_end``), so the resumed fit
  restarts *inside* that epoch, runs its remaining batches and then the epochs still in the budget: the
  same ``global_step`` as an uninterrupted run with the final trainer settings.
- data order: the datamodule's saved state (tsdiff's datamodules keep their shuffling generator there) is
  replaced by its state at the start of the interrupted epoch, and the resumed run skips the batches the
  epoch already used, so it sees exactly the batches an uninterrupted run would (PyTorch's DataLoader cannot
  resume mid-epoch by itself). The model's and callbacks' ``on_train_epoch_end`` still ran once for the
  partial epoch before the stop (Lightning calls it); tsdiff's models keep no per-epoch state there.
- random state: a stop on ``should_stop`` validates once more before the checkpoint (the uninterrupted run does
  not), and creating the validation iterator draws from the global RNG; the checkpoint keeps the RNG state
  taken after the last training batch instead (this callback runs after ``tasks.common``'s checkpoint callback,
  which writes ``tsdiff_rng``).

Tested in ``tests/integration/test_resume_mid_epoch.py``: the reported case (stopped by ``max_steps`` inside
epoch 1, resumed with ``max_epochs=2``: 2 epochs of steps, not 1) and a Ctrl+C inside an epoch resumed to the
weights of the uninterrupted run. A run that *finished* (status ``done``) ends with its EMA weights, so training
it longer continues from those: same step count as an uninterrupted run, not the same weights. Checkpoints
written before this fix still count their partial epoch as done.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

from tsdiff.tasks.common import _rng_state


def _batches_into_epoch(trainer) -> int:
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def _mid_epoch(trainer) -> bool:
    """True while fewer batches than an epoch's have run (a finite epoch only; iterable data has no end)."""
    total = trainer.num_training_batches
    done = _batches_into_epoch(trainer)
    return math.isfinite(float(total)) and 0 < done < total


def mid_epoch_resume_callback():
    import pytorch_lightning as pl

    class MidEpochResume(pl.Callback):
        def __init__(self) -> None:
            self._epoch_start_data: dict | None = None
            self._rng_after_batch: dict | None = None

        def _data_key(self, trainer) -> str | None:
            dm = trainer.datamodule
            return None if dm is None else dm.__class__.__qualname__

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            # the epoch's batches are drawn at its first batch, so this is the state that reproduces them
            if trainer.datamodule is not None:
                self._epoch_start_data = copy.deepcopy(trainer.datamodule.state_dict())

        def on_train_start(self, trainer, pl_module) -> None:
            loop = trainer.fit_loop
            skip = _batches_into_epoch(trainer)
            if not (loop.restarted_mid_epoch and skip > 0):
                return
            if trainer.datamodule is not None:  # restored state = the start of this epoch (see on_save_checkpoint)
                self._epoch_start_data = copy.deepcopy(trainer.datamodule.state_dict())
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
            iterator = loop._data_fetcher.iterator  # the epoch's fresh iterator: drop what the epoch already used
            for _ in range(skip):
                next(iterator)

        def on_train_batch_end(self, trainer, *args) -> None:
            # a stop inside an epoch validates once more (Lightning does on `should_stop`), which draws from the
            # global RNG; the resumed run must continue from the state the next training batch would have seen
            self._rng_after_batch = _rng_state()

        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
            if not _mid_epoch(trainer):
                return
            if self._rng_after_batch is not None:
                checkpoint["tsdiff_rng"] = self._rng_after_batch  # replaces the save-time state (tasks.common)
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
            for part in ("total", "current"):  # started, not processed: Lightning restarts inside the epoch
                progress[part]["processed"] = progress[part]["completed"] = progress[part]["started"] - 1
            checkpoint["epoch"] = progress["current"]["completed"]
            key = self._data_key(trainer)
            if key is not None and self._epoch_start_data:
                checkpoint[key] = copy.deepcopy(self._epoch_start_data)

    return MidEpochResume()
