"""The training loop.

One `Trainer` holds everything a run is made of: the network, the optimizer and learning-rate
schedule, the AMP scaler, the position in the data (epoch and batch), the running sums of the
current epoch, early stopping and the history (the pieces: `optim.py`, `progress.py`,
`history.py`). Each has `state_dict()`/`load_state_dict()`, and `Trainer.state_dict()` gathers
them into the checkpoint, so a run killed at any instant and continued from its last checkpoint
ends bit-identical (on a CPU) to one never stopped:

- every batch is `sampler.batch(epoch, index)`, a pure function of (seed, epoch, index), so the
  position in the data is just two integers, whichever DataLoader workers made it ahead of time
  (`data.loader`);
- the running loss sum of a half-done epoch is saved, so its history row comes out the same; it
  is summed on the device and read only when saved or logged, so a step never waits for the
  GPU to finish the one before;
- validation runs between the RNG capture points and restores every RNG it could touch.

`Trainer.fit()` stops at a step boundary when asked (SIGTERM/SIGINT through `StopRequest`, or the
time limit about to run out), saves, and returns; `modes.run_training` decides where to start.
Ranks: `rank`/`world_size` are threaded through for DistributedDataParallel; only rank 0 writes.
Validation runs every `training.validate_every` epochs and after the last; early stopping's
patience and `best` count validations, and follow the pooled Dice smoothed over them
(`training.select_by`; `progress.EarlyStopping`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ichseg.config import Config
from ichseg.data.ct import window_channels
from ichseg.device import pick_device
from ichseg.evaluation.metrics import dice
from ichseg.models.window import window_logits
from ichseg.training import distributed
from ichseg.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
    rng_untouched,
)
from ichseg.training.device_setup import amp_policy, configure_device
from ichseg.training.history import History
from ichseg.training.losses import DeepSupervisionLoss
from ichseg.training.optim import PolyLR, make_optimizer, make_scheduler
from ichseg.training.progress import EarlyStopping, Progress
from ichseg.training.train_log import show_bars

log = logging.getLogger("ichseg.training")

# Steps whose slowest one is the time limit's estimate of the next step.
RECENT_STEPS = 20
# Under torchrun, ranks agree on stopping and timed saves about this often (every K steps, K
# from the slowest rank's step time): each agreement is an all-reduce that waits for the device,
# and a SIGTERM or the time limit is still honoured within about a second.
AGREE_SECONDS = 1.0
# Steps between progress-bar loss updates (each reads the loss from the device).
BAR_EVERY = 10


# --- the trainer ------------------------------------------------------------------------------

class Trainer:
    """Trains `cfg`'s network on prepared cases; see the module docstring."""

    def __init__(self, cfg: Config, train_cases: Sequence[Any], val_cases: Sequence[Any],
                 run_dir: str | Path, target_epochs: int, rank: int = 0, world_size: int = 1,
                 split: dict[str, Any] | None = None):
        from ichseg.data.sampling import PatchSampler
        from ichseg.models import build_model

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.target_epochs = target_epochs
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.val_cases = list(val_cases)
        self.split = split  # saved with each checkpoint: split.json can be restored from it
        self.device = distributed.rank_device(pick_device(cfg.training.device))
        configure_device(self.device, cfg.training.deterministic)

        # Model initialisation is seeded by training.seed; the global NumPy and Python generators
        # too, so anything outside the (seed, epoch, index) scheme is still repeatable.
        seed = cfg.training.seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.model = build_model(cfg).to(self.device)
        # Training steps run through DDP under torchrun; `model` stays the plain network.
        self.network = distributed.wrap_model(self.model, cfg, self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, target_epochs)
        self.amp_dtype, needs_scaler = amp_policy(cfg.training.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        self.loss_fn = DeepSupervisionLoss()
        self.train_loss_fn = distributed.training_loss(self.loss_fn)
        self.sampler = PatchSampler(list(train_cases), cfg, seed)

        self.progress = Progress()
        t = cfg.training
        self.early = EarlyStopping(t.patience, t.select_by, t.min_epochs, t.score_smoothing)
        self.history = History()
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints",
                                             keep=cfg.training.keep_checkpoints,
                                             mirror_dir=cfg.training.mirror_dir or None)
        self.last_checkpoint: Path | None = None
        # Measured durations, for the time limit (seconds; the first guesses are refined). A step
        # is budgeted at the slowest of the recent ones, not counting the session's first: it
        # also pays one-off costs (compiling the scan kernels took 55 s of it once), which would
        # otherwise keep every later step from starting within that long of the limit.
        self._recent_steps: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self._session_steps = 0
        self._validation_seconds = 0.0
        # The losses of the steps since `_collect_loss` last ran, summed on the device.
        self._pending_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._data_seconds = 0.0     # waited for batches in the epoch in progress (this session)
        self._next_agreement = 0     # `progress.step` at which the ranks next agree
        self._save_seconds = 1.0 + sum(p.numel() * p.element_size()
                                       for p in self.model.parameters()) * 3 / 100e6

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the eight legacy keys, then the ones that make continuation exact."""
        progress = self.progress.state_dict()
        early = self.early.state_dict()
        return {
            "model_state": self.model.state_dict(),
            "epoch": progress.pop("epoch"),
            "history": self.history.state_dict(),
            "best_val": early.pop("best_val"),
            "no_improve": early.pop("no_improve"),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler else None,
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "step": progress.pop("step"),
            "epoch_step": progress.pop("epoch_step"),
            "rng": capture_rng_state(),
            "progress": progress,
            "early_stopping": early,
            "world_size": self.world_size,
            **({"split": self.split} if self.split is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint of this format. (Legacy ones: `legacy.load_legacy`.)"""
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scheduler.load_state_dict(state["scheduler_state"])
        if isinstance(self.scheduler, PolyLR):
            self.scheduler.total_steps = self.target_epochs * self.cfg.training.steps_per_epoch
        if self.scaler is not None and state.get("scaler_state"):
            self.scaler.load_state_dict(state["scaler_state"])
        self.progress.load_state_dict({**state.get("progress", {}), "epoch": state["epoch"],
                                       "step": state["step"], "epoch_step": state["epoch_step"]})
        self.early.load_state_dict({**state.get("early_stopping", {}),
                                    "best_val": state["best_val"],
                                    "no_improve": state["no_improve"]})
        self.history.load_state_dict(state["history"])
        restore_rng_state(state["rng"])

    # -- one step, one validation ------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one batch; returns the batch's loss, on the device (reading it
        would wait for the step to finish)."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.train_loss_fn(self.network(images), labels)
        clip = self.cfg.training.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Over the whole validation volumes (sliding window): the mean loss, the mean of the
        cases' hemorrhage Dice, and the pooled Dice (nnU-Net's pseudo-Dice): 2TP / (2TP + FP +
        FN) with the counts summed over every case, so that false blood in a scan without
        hemorrhage counts too (1 when there is no blood to find and none is predicted). The
        Dice are of the predictions as predict makes them: with `inference.intracranial_only`,
        nothing outside the case's cranial cavity (the loss is of the network's output)."""
        if not self.val_cases:
            return math.nan, math.nan, math.nan
        distributed.sync_buffers(self.model)
        losses, dices = [], []
        tp = fp = fn = 0
        self.model.eval()
        try:
            with rng_untouched(), distributed.shared_failures():
                # Each rank validates its own share of the cases; the sums are added up below.
                for case in self.val_cases[self.rank::self.world_size]:
                    hu, truth = case.read()  # one volume in memory at a time
                    channels = window_channels(hu, self.cfg.data.windows)
                    image = torch.from_numpy(channels)[None].to(self.device)
                    label = torch.from_numpy(truth.astype(np.int64))[None, None].to(self.device)
                    with self._autocast():
                        logits = window_logits(self.model, image, self.cfg)
                    losses.append(float(self.loss_fn(logits.float(), label).item()))
                    # Of "any hemorrhage" (label > 0), whether or not subtypes are trained.
                    predicted, blood = logits.argmax(1) > 0, label[:, 0] > 0
                    if self.cfg.inference.intracranial_only and case.cavity is not None:
                        # As predict makes them: nothing outside the cranial cavity.
                        predicted &= torch.from_numpy(np.array(case.cavity))[None].to(self.device)
                    dices.append(dice(predicted, blood))
                    tp += int((predicted & blood).sum())
                    fp += int((predicted & ~blood).sum())
                    fn += int((~predicted & blood).sum())
        finally:
            self.model.train()
        loss_sum, dice_sum, tp, fp, fn = distributed.sum_over_ranks(
            [sum(losses), sum(dices), tp, fp, fn])
        pooled = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        return loss_sum / len(self.val_cases), dice_sum / len(self.val_cases), pooled

    # -- saving ----------------------------------------------------------------------------------
    def save(self, best: bool = False) -> None:
        """Rank 0 writes; every rank waits until the generation is committed, and raises rank
        0's error (a full disk) with it."""
        started = time.monotonic()
        self._collect_loss()
        with distributed.shared_failures():
            if self.is_main:
                state = self.state_dict()
                if best:
                    self.checkpoints.save_best(state)
                else:
                    self.last_checkpoint = self.checkpoints.save(state)
        self._save_seconds = time.monotonic() - started

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, stop: Any = None, deadline: float | None = None) -> str:
        """Train until the target, early stopping, a stop request or the deadline.

        Returns "finished", "early-stopped" or "stopped". `stop` has a `.requested` flag
        (`signals.StopRequest`); `deadline` is a `time.monotonic()` value.
        """
        from ichseg.data.loader import training_batches

        t = self.cfg.training
        steps = t.steps_per_epoch
        last_save = time.monotonic()
        p = self.progress
        p.session += 1
        self.model.train()
        quiet = not show_bars(self.cfg) or not self.is_main
        # One loader for the session, from where the run stands to the target's last step.
        batches = training_batches(self.sampler, self.cfg, self.device, p.epoch + 1,
                                   p.epoch_step, (self.target_epochs - p.epoch) * steps
                                   - p.epoch_step, self.rank, self.world_size)

        while p.epoch < self.target_epochs and not self.early.stopped:
            epoch = p.epoch + 1
            bar = tqdm(total=steps, initial=p.epoch_step, desc=f"epoch {epoch}/{self.target_epochs}",
                       unit="batch", leave=False, disable=quiet, dynamic_ncols=True)
            with bar:
                while p.epoch_step < steps:
                    decision = self._decide(stop, deadline, last_save)
                    if decision == "stop":
                        return self._stop_now(stop)
                    if decision == "save":
                        self.save()
                        last_save = time.monotonic()
                    tick = time.monotonic()
                    images, labels = next(batches)
                    self._data_seconds += time.monotonic() - tick
                    self._pending_loss += self.train_step(images, labels)
                    elapsed = time.monotonic() - tick
                    self._session_steps += 1
                    if self._session_steps > 1:
                        self._recent_steps.append(elapsed)
                    p.epoch_step += 1
                    p.step += 1
                    p.epoch_seconds += elapsed
                    p.train_seconds += elapsed
                    if not quiet and (p.epoch_step % BAR_EVERY == 0 or p.epoch_step == steps):
                        # This rank's running mean (the ranks' mean once collected).
                        running = p.loss_sum + float(self._pending_loss)
                        bar.set_postfix(loss=f"{running / p.epoch_step:.4f}",
                                        lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    bar.update()
                    # Periodic saves; the last batch of an epoch is saved by the epoch's end.
                    if p.epoch_step < steps and t.save_every_steps and (
                            p.step % t.save_every_steps == 0):
                        self.save()
                        last_save = time.monotonic()
            if distributed.any_rank((stop is not None and stop.requested)
                                    or self._out_of_time(deadline, p, steps_ahead=0)):
                return self._stop_now(stop)
            self._end_epoch(epoch)
            last_save = time.monotonic()
        if self.early.stopped:
            return "early-stopped"
        return "finished"

    def _decide(self, stop: Any, deadline: float | None, last_save: float) -> str | None:
        """At a step boundary: "stop", "save" (a timed save is due) or None, alike on every rank.

        One process decides at every step, at no cost. Under torchrun the ranks must agree, and
        an agreement is an all-reduce that waits for the device: they agree every K steps, K
        such that K of the slowest rank's steps take about `AGREE_SECONDS`, and the time limit
        looks K steps ahead. (Per-step saves need no agreement: every rank counts the steps.)
        """
        p, t = self.progress, self.cfg.training
        ranks = distributed.is_active()
        if ranks and p.step < self._next_agreement:
            return None
        step_seconds = max(self._recent_steps, default=0.0)
        ahead = _steps_in(AGREE_SECONDS, step_seconds) if ranks else 1
        wants_stop = (stop is not None and stop.requested) or self._out_of_time(deadline, p, ahead)
        wants_save = bool(t.save_every_minutes) and (
            time.monotonic() - last_save >= 60 * t.save_every_minutes)
        stop_now, save_now, slowest = distributed.max_over_ranks(
            [wants_stop, wants_save and p.epoch_step > 0, step_seconds])
        self._next_agreement = p.step + _steps_in(AGREE_SECONDS, slowest)
        return "stop" if stop_now else "save" if save_now else None

    def _validates(self, epoch: int) -> bool:
        every = self.cfg.training.validate_every
        return epoch % every == 0 or epoch == self.target_epochs

    def _collect_loss(self) -> None:
        """Move the losses summed on the device since the last call into `progress.loss_sum`
        (as the mean over ranks). A float64 sum of float32 losses of similar size is exact, so
        how the steps are grouped between calls (a resumed run's saves differ) never changes it;
        under torchrun also the division by a world size that is a power of two."""
        local = float(self._pending_loss)
        self._pending_loss.zero_()
        self.progress.loss_sum += distributed.mean_over_ranks(local)

    def _end_epoch(self, epoch: int) -> None:
        """Validate (when due), record the epoch, update early stopping, save `best` and `last`."""
        p = self.progress
        self._collect_loss()
        val_loss = val_dice = pooled = smoothed = math.nan
        if self._validates(epoch):
            tick = time.monotonic()
            val_loss, val_dice, pooled = self.validate()
            self._validation_seconds = time.monotonic() - tick
            p.epoch_seconds += self._validation_seconds
            p.train_seconds += self._validation_seconds
        improved = not math.isnan(val_loss) and self.early.update(epoch, val_loss, pooled)
        if not math.isnan(pooled):
            smoothed = self.early.smoothed
        self.history.append({
            "epoch": epoch, "train_loss": p.loss_sum / self.cfg.training.steps_per_epoch,
            "val_loss": val_loss, "val_dice": val_dice, "val_pooled_dice": pooled,
            "val_pooled_dice_smoothed": smoothed,
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": p.epoch_seconds,
            "session": p.session})
        p.epoch, p.epoch_step, p.loss_sum, p.epoch_seconds = epoch, 0, 0.0, 0.0
        if improved:
            self.save(best=True)
        self.save()
        seconds = self.history.last("epoch_seconds")
        if math.isnan(val_loss):
            checked = "not validated"
        else:
            checked = (f"validation loss {val_loss:.4f}, Dice {val_dice:.4f}, pooled Dice "
                       f"{pooled:.4f} (smoothed {smoothed:.4f})" + (
                " (best)" if improved else
                f", {self.early.bad_validations} validation(s) without improvement"))
        log.info("epoch %d/%d: train loss %.4f, %s (%.1fs, %.0f%% of it waiting for data)",
                 epoch, self.target_epochs, self.history.last("train_loss"), checked, seconds,
                 100 * self._data_seconds / max(seconds, 1e-9))
        self._data_seconds = 0.0
        if self.early.stopped:
            log.info("early stopping: no validation improvement for %d validations (best %s "
                     "%.4f at epoch %d)", self.early.bad_validations, self.early.judged,
                     self.early.best, self.early.best_epoch)
        if self.is_main:
            self.history.write_csv(self.run_dir / "history.csv")
            self._draw_progress()

    def _draw_progress(self) -> None:
        from ichseg.viz.progress import draw_progress

        try:
            draw_progress(self.history.state_dict(), self.run_dir / "progress.png",
                          self.early.rule)
        except Exception as exc:  # noqa: BLE001 - a picture must never end a training run
            log.warning("could not draw %s: %s", self.run_dir / "progress.png", exc)

    def _out_of_time(self, deadline: float | None, p: Progress, steps_ahead: int) -> bool:
        """Would the next `steps_ahead` steps (0: none, at an epoch's end), the validation where
        the epoch ends within them, and a save overrun the deadline?"""
        if deadline is None or not self._recent_steps:
            return False  # the first two steps of a session are always taken, and measured
        step_seconds = max(self._recent_steps)
        work = steps_ahead * step_seconds
        if self.cfg.training.steps_per_epoch - p.epoch_step <= steps_ahead \
                and self._validates(p.epoch + 1):
            work += self._validation_seconds or step_seconds * max(len(self.val_cases), 1)
        return time.monotonic() + work + self._save_seconds > deadline

    def _stop_now(self, stop: Any) -> str:
        why = "stop requested" if stop is not None and stop.requested else "time limit reached"
        self.save()
        p = self.progress
        log.info("%s: saved at epoch %d, batch %d/%d (step %d); continue with the same command",
                 why, p.epoch + 1, p.epoch_step, self.cfg.training.steps_per_epoch, p.step)
        return "stopped"


def _steps_in(seconds: float, step_seconds: float) -> int:
    """Steps of `step_seconds` that fit in `seconds` (at least one; one while unmeasured)."""
    return max(1, int(seconds / step_seconds)) if step_seconds > 0 else 1
