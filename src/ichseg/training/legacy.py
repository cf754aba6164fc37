"""Checkpoints of the original Colab script (the eight legacy keys of docs/CONTRACT.md): checked
against the configured network before anything is written, then loaded into a `Trainer`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichseg.config import Config
from ichseg.errors import UsageError
from ichseg.training.optim import make_optimizer, make_scheduler

if TYPE_CHECKING:
    from ichseg.training.loop import Trainer

log = logging.getLogger("ichseg.training")


def fits_network(cfg: Config, model_state: dict[str, Any], origin: Path) -> None:
    """UsageError, before anything is written, when weights from elsewhere (a legacy checkpoint)
    do not fit the configured network."""
    from ichseg.models import build_model

    try:
        build_model(cfg).load_state_dict(model_state)
    except RuntimeError as exc:
        raise UsageError(f"checkpoint {origin} does not fit the configured network: "
                         f"{str(exc).splitlines()[0]}") from None


def load_legacy(trainer: Trainer, state: dict[str, Any], origin: Path) -> None:
    """Into `trainer`, a checkpoint of the original script's eight keys: weights, optimizer,
    schedule, counters. (Checkpoints of this format: `Trainer.load_state_dict`.)

    No sampler position, running sums or RNG exist in it, so training restarts at the epoch
    boundary after `epoch`, not bit-exactly. An optimizer or schedule whose parameter groups
    do not fit this network's starts fresh, with a warning.
    """
    trainer.model.load_state_dict(state["model_state"])  # `fits_network` checked it already
    epoch = int(state["epoch"])
    step = epoch * trainer.cfg.training.steps_per_epoch
    try:
        trainer.optimizer.load_state_dict(state["optimizer_state"])
        trainer.scheduler.load_state_dict(state["scheduler_state"])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("the optimizer or schedule state of %s does not fit (%s): they start "
                    "fresh at step %d", origin, exc, step)
        trainer.optimizer = make_optimizer(trainer.model, trainer.cfg)
        trainer.scheduler = make_scheduler(trainer.optimizer, trainer.cfg, trainer.target_epochs)
        # Every schedule here is in closed form: setting the count moves it to `step`.
        trainer.scheduler.last_epoch = step - 1
        trainer.scheduler.step()
    if trainer.scaler is not None and state.get("scaler_state"):
        trainer.scaler.load_state_dict(state["scaler_state"])
    trainer.progress.load_state_dict({"epoch": epoch, "step": step, "epoch_step": 0})
    trainer.early.load_state_dict(state)
    trainer.history.load_state_dict(state.get("history") or {})
