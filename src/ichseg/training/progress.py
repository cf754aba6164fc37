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


class EarlyStopping:
    """Stop after `patience` validations without a lower validation loss (epochs when every
    epoch validates); patience 0 never stops."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.bad_validations = 0
        self.stopped = False

    def update(self, value: float, epoch: int) -> bool:
        """Record the validation loss of epoch `epoch`; True when it is the best so far."""
        if value < self.best:
            self.best, self.best_epoch, self.bad_validations = value, epoch, 0
            return True
        self.bad_validations += 1
        self.stopped = self.patience > 0 and self.bad_validations >= self.patience
        return False

    def restart(self) -> None:
        """Begin a fresh patience count (a stopped run whose target was raised)."""
        self.bad_validations, self.stopped = 0, False

    def state_dict(self) -> dict[str, Any]:
        return {"best_val": self.best, "best_epoch": self.best_epoch,
                "no_improve": self.bad_validations, "early_stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best_val")
        self.best = math.inf if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch") or 0)
        self.bad_validations = int(state.get("no_improve") or 0)
        self.stopped = bool(state.get("early_stopped", False))
