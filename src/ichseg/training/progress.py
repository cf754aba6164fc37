"""The run's position and early stopping: two small resumable pieces of the `Trainer`.

Each has `state_dict()`/`load_state_dict()`; `Trainer.state_dict()` files their entries under
the checkpoint's keys (the legacy ones at the top level, the rest under `progress` and
`early_stopping`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Progress:
    """Where the run stands, and the sums of the epoch in progress (saved mid-epoch)."""

    epoch: int = 0              # completed epochs
    epoch_step: int = 0         # batches done inside epoch `epoch + 1`
    step: int = 0               # optimizer steps done in all
    loss_sum: float = 0.0       # sum of the batch losses of the epoch in progress
    epoch_seconds: float = 0.0  # time spent in the epoch in progress, over every session
    train_seconds: float = 0.0  # time spent training in all
    session: int = 0            # processes that have trained this run, this one included

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))


# What `best` is under each `training.select_by`, in words (logs, `ichseg status`).
JUDGED = {"pooled_dice": "smoothed pooled Dice", "val_loss": "validation loss"}


class EarlyStopping:
    """`best` and early stopping: stop after `patience` validations without a better value,
    counting only validations after epoch `min_epochs`; patience 0 never stops.

    `rule` (`training.select_by`) says which value is judged: "pooled_dice", the validation's
    pooled Dice smoothed over validations (higher is better), or "val_loss" (lower is better),
    the rule of the runs from before the pooled Dice, which a checkpoint without a rule keeps.
    The smoothed pooled Dice is kept under either rule, for the history.
    """

    def __init__(self, patience: int, rule: str = "val_loss", min_epochs: int = 0,
                 smoothing: float = 0.9):
        self.patience, self.min_epochs, self.smoothing = patience, min_epochs, smoothing
        self.rule = rule
        self.best = self._worst()
        self.best_epoch = 0
        self.bad_validations = 0
        self.stopped = False
        self.smoothed = math.nan

    def _worst(self) -> float:
        return -math.inf if self.rule == "pooled_dice" else math.inf

    def update(self, epoch: int, val_loss: float, pooled_dice: float = math.nan) -> bool:
        """Record the validation of epoch `epoch`; True when it is the best so far."""
        if not math.isnan(pooled_dice):
            # nnU-Net's moving average, started at the first value.
            self.smoothed = pooled_dice if math.isnan(self.smoothed) else (
                self.smoothing * self.smoothed + (1.0 - self.smoothing) * pooled_dice)
        if self.rule == "pooled_dice":
            value, better = self.smoothed, self.smoothed > self.best
        else:
            value, better = val_loss, val_loss < self.best
        if better:
            self.best, self.best_epoch, self.bad_validations = value, epoch, 0
            return True
        if epoch > self.min_epochs:
            self.bad_validations += 1
        self.stopped = self.patience > 0 and self.bad_validations >= self.patience
        return False

    @property
    def judged(self) -> str:
        """What `best` is, in words."""
        return JUDGED[self.rule]

    def restart(self) -> None:
        """Begin a fresh patience count (a stopped run whose target was raised)."""
        self.bad_validations, self.stopped = 0, False

    def state_dict(self) -> dict[str, Any]:
        return {"best_val": self.best, "best_epoch": self.best_epoch,
                "no_improve": self.bad_validations, "early_stopped": self.stopped,
                "rule": self.rule, "smoothed": self.smoothed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A state without a rule is from before the pooled Dice: it goes on judging the loss."""
        self.rule = str(state.get("rule", "val_loss"))
        best = state.get("best_val")
        self.best = self._worst() if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch") or 0)
        self.bad_validations = int(state.get("no_improve") or 0)
        self.stopped = bool(state.get("early_stopped", False))
        self.smoothed = float(state.get("smoothed", math.nan))
