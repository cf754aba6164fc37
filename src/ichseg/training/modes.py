"""`ichseg train`: which state a run starts from, its target, and the checks that come first.

`run_training` works in two halves. `plan_run` reads everything (config, checkpoints, dataset,
split) and raises UsageError on anything wrong, without writing a byte. Only then, under the run
folder's lock, is anything moved or written: an old run archived (`--mode new`), config.yaml and
split.json, and the training itself (`loop.Trainer`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichseg.config import (
    RESUMABLE_CHANGES,
    Config,
    config_differences,
    config_from_dict,
    flatten,
    parse_duration,
    resolve_config,
)
from ichseg.errors import UsageError, full_disk
from ichseg.fileio import atomic_write_text
from ichseg.training import distributed
from ichseg.training.run_folder import (
    ARCHIVE,
    CONFIG_FILE,
    SPLIT_FILE,
    TRAIN_LOG,
    missing_keys,
    read_recorded_config,
    read_split,
    split_lists,
)
from ichseg.training.train_log import TrainLog, collected_train_log, console_logging, show_bars

log = logging.getLogger("ichseg.training")



# Called with (run folder, resolved config, quiet) at the end of a run that was not stopped.
AfterTraining = Callable[[Path, Config, bool], None]


@dataclass
class TrainResult:
    run_dir: Path
    state: str  # finished | early-stopped | stopped | already-finished
    epochs_completed: int
    target_epochs: int
    best_val: float | None
    best_epoch: int | None
    last_checkpoint: Path | None


@dataclass
class Plan:
    """Everything `run_training` decided before touching the disk."""

    cfg: Config
    run_dir: Path
    target: int
    checkpoint: dict[str, Any] | None = None  # the state to start from
    checkpoint_path: Path | None = None
    legacy: bool = False
    archive_first: bool = False      # move the existing run aside before starting
    restart_patience: bool = False   # a stopped run whose target was raised
    done_message: str | None = None  # set when there is nothing to train
    from_mirror: Any = None  # the LoadedCheckpoint to copy home from the mirror, under the lock
    init_weights: Any = None  # `--init-from`: weights applied once, to a run that starts new
    mode: str = "continue"
    split: dict[str, list[str]] = field(default_factory=dict)
    cases: dict[str, Any] = field(default_factory=dict)  # case id -> Case
    label_mapping: Any = None  # the layout's LabelMapping, from detection to the cache


def run_training(data: str | Path | None, run_dir: str | Path, mode: str = "continue",
                 after_training: AfterTraining | None = None, **options: Any) -> TrainResult:
    """Train in `run_dir` as the contract's "Training modes" say.

    `after_training(run_dir, cfg, quiet)` runs on the main rank when a run with validation cases
    finished or stopped early, while its lock is still held and its log still collects: `api.train` chooses the
    run's postprocessing there (a step of the inference package, which builds on this one).
    """
    started = time.monotonic()  # the time limit counts from here, data preparation included
    ranks = distributed.ranks_from_environment()  # torchrun's; a single process is rank 0 of 1
    try:
        return _run_training(data, Path(run_dir), mode, started, ranks, after_training, options)
    except OSError as exc:
        # Checkpoints say so themselves (with the size they needed); this covers the run's
        # other files (history.csv, config.yaml, the cache).
        disk_full = full_disk(exc, run_dir)
        if disk_full is None:
            raise
        raise disk_full from None


def _run_training(data: str | Path | None, run_dir: Path, mode: str, started: float,
                  ranks: distributed.Ranks, after_training: AfterTraining | None,
                  options: dict[str, Any]) -> TrainResult:
    with console_logging(), distributed.main_rank_logs(ranks), collected_train_log() as train_log:
        # Every rank plans (reading only); nothing is written until they all have.
        plan = plan_run(data, run_dir, distributed.mode_after_restart(mode), **options)
        if plan.done_message:
            log.info(plan.done_message)
            return _result(plan, "already-finished", plan.checkpoint, plan.checkpoint_path)
        distributed.check_batch_split(plan.cfg, ranks)
        limit = plan.cfg.training.time_limit
        deadline = started + parse_duration(limit) if limit else None
        distributed.start(plan.cfg, ranks)
        try:
            with distributed.failures_published(run_dir):
                return _train(plan, deadline, train_log, ranks, after_training)
        finally:
            distributed.stop()


# --- planning: read and check, write nothing ----------------------------------------------------

def plan_run(data: str | Path | None, run_dir: str | Path, mode: str = "continue", *,
             preset: str | None = None, epochs: int | None = None,
             additional_epochs: int | None = None, config_file: str | Path | None = None,
             sets: Sequence[str] = (), seed: int | None = None, device: str | None = None,
             save_every_steps: int | None = None, save_every_minutes: float | None = None,
             time_limit: str | None = None, patience: int | None = None,
             resume_from: str | Path | None = None, mirror_dir: str | Path | None = None,
             strict_resume: bool = False, quiet: bool = False, fold: int | None = None,
             init_from: str | Path | None = None) -> Plan:
    from ichseg.training.checkpoint import CheckpointManager, is_legacy, load_checkpoint_file
    from ichseg.training.init_from import plan_init_weights
    from ichseg.training.legacy import fits_network

    if mode not in ("continue", "new"):
        raise UsageError(f"--mode must be continue or new, got {mode!r}")
    if epochs is not None and additional_epochs is not None:
        raise UsageError("give either --epochs (the total) or --additional-epochs, not both")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file, not a folder")
    if time_limit:
        parse_duration(time_limit)
    if init_from and resume_from:
        raise UsageError("give either --resume-from (a run's whole state) or --init-from (its "
                         "weights alone, for a new run), not both")

    training = {key: value for key, value in {
        "epochs": epochs, "seed": seed, "device": device, "save_every_steps": save_every_steps,
        "save_every_minutes": save_every_minutes, "time_limit": time_limit,
        "patience": patience, "mirror_dir": str(mirror_dir) if mirror_dir else None,
        "quiet": True if quiet else None,
        "init_from": str(Path(init_from).absolute()) if init_from else None}.items()
        if value is not None}
    data_keys = {"path": str(Path(data).resolve()) if data else None, "fold": fold}
    overrides = {"training": training,
                 "data": {key: value for key, value in data_keys.items() if value is not None}}
    config_path = run_dir / CONFIG_FILE

    # 1. The state to start from, and the config it was trained with.
    checkpoint, checkpoint_path, legacy, archive_first, loaded = None, None, False, False, None
    recorded: Config | None = None
    has_run = run_dir.is_dir() and any(p.name != ARCHIVE for p in run_dir.iterdir())
    if resume_from:
        checkpoint_path = Path(resume_from)
        checkpoint = load_checkpoint_file(checkpoint_path)
        legacy = is_legacy(checkpoint)
        if legacy:
            log.warning("checkpoint %s is in the legacy format (no RNG, sampler position or "
                        "config): training continues from it, but not bit-exactly", checkpoint_path)
        archive_first = has_run
    elif mode == "continue":
        # The mirror (e.g. Google Drive) counts too: a fresh runtime has an empty local disk.
        recorded, raw, damage = read_recorded_config(config_path)
        manager = CheckpointManager(
            run_dir / "checkpoints", keep=recorded.training.keep_checkpoints if recorded else 3,
            mirror_dir=mirror_dir or (recorded.training.mirror_dir if recorded else None) or None)
        # Read only: a winner in the mirror is brought home once the run's lock is held.
        loaded = manager.load_latest(copy_back=False)  # UsageError: files there, none valid
        stored = loaded.state.get("config") if loaded is not None else None
        if raw is not None and isinstance(stored, dict):
            damage = missing_keys(raw, stored)
            recorded = None if damage else recorded
        if damage and (loaded is None or not isinstance(loaded.state.get("config"), dict)):
            raise UsageError(f"{config_path} is damaged ({damage}) and no checkpoint holds the "
                             "run's settings; repair it, or start over with --mode new")
        if damage:
            log.warning("%s is damaged (%s): the run's settings are taken from its checkpoint %s "
                        "and the file is written again", config_path, damage, loaded.path)
        if loaded is None:
            if strict_resume:
                raise UsageError(f"--strict-resume: there is no checkpoint in {run_dir} to "
                                 "continue from")
            log.warning("no checkpoint in %s: starting a new run", run_dir / "checkpoints")
        else:
            checkpoint, checkpoint_path = loaded.state, loaded.path
    else:
        archive_first = has_run

    # 2. The config: the saved one on continue, laid over with what was given again.
    saved = None
    if checkpoint is not None and not legacy and isinstance(checkpoint.get("config"), dict):
        saved = config_from_dict(checkpoint["config"], f"the config stored in {checkpoint_path}")
    base = None
    if recorded is not None:
        base = recorded
    elif saved is not None:
        base = saved
    if base is not None:
        # A limit and silenced progress bars are for one session; each command gives its own.
        base.training.time_limit = ""
        base.training.quiet = False
    cfg = resolve_config(preset, config_file, sets, overrides, base=base)
    if not cfg.data.path:
        raise UsageError("--data is required to start a run (no dataset is recorded in "
                         f"{config_path})")
    if saved is not None:
        _check_changes(saved, cfg, checkpoint_path)
    elif legacy:
        if cfg.model.norm != "batch" and any(str(key).endswith("running_mean")
                                             for key in checkpoint["model_state"]):
            # The original script's network normalised with BatchNorm (its running statistics
            # are in these weights), the norm every preset had then.
            log.warning("checkpoint %s holds a BatchNorm network: model.norm=batch",
                        checkpoint_path)
            cfg.model.norm = "batch"
        fits_network(cfg, checkpoint["model_state"], checkpoint_path)
        # Its best_val and no_improve count validation losses: the run goes on judging by them.
        cfg.training.select_by = "val_loss"
    init_weights = plan_init_weights(cfg, resuming=checkpoint is not None)

    # 3. The target, and whether anything is left to do.
    done_epochs = int(checkpoint["epoch"]) if checkpoint is not None else 0
    target = done_epochs + additional_epochs if additional_epochs is not None else cfg.training.epochs
    cfg.training.epochs = target
    plan = Plan(cfg, run_dir, target, checkpoint, checkpoint_path, legacy, archive_first,
                from_mirror=loaded if loaded is not None and loaded.source == "mirror" else None,
                mode=mode, init_weights=init_weights)
    if checkpoint is not None:
        stopped_early = bool((checkpoint.get("early_stopping") or {}).get("early_stopped"))
        previous_target = saved.training.epochs if saved is not None else None
        raised = (additional_epochs is not None and additional_epochs > 0) or (
            epochs is not None and previous_target is not None and epochs > previous_target)
        if stopped_early and raised:
            plan.restart_patience = True
            log.warning("the run stopped early at epoch %d; with the target raised to %d the "
                        "patience count starts again", done_epochs, target)
        elif stopped_early:
            plan.done_message = (f"{run_dir} stopped early at epoch {done_epochs} (no validation "
                                 "improvement); nothing to do until the target is raised with "
                                 "--epochs or --additional-epochs")
        elif done_epochs >= target:
            plan.done_message = (f"{run_dir} already reached its target of {target} epochs "
                                 f"({done_epochs} done); nothing to do until the target is "
                                 "raised with --epochs or --additional-epochs")
    if plan.done_message:
        return plan

    # 4. The data: every case readable, the split, the patch size the network can take.
    _plan_data(plan, resuming=checkpoint is not None and not resume_from)
    return plan


def _check_changes(saved: Config, cfg: Config, origin: Path | None) -> None:
    """Refuse changes that alter the model or the data; note the harmless ones."""
    changed = config_differences(saved, cfg)
    refused = [key for key in changed if key not in RESUMABLE_CHANGES]
    if refused:
        before, after = flatten(saved), flatten(cfg)
        detail = "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in refused)
        raise UsageError(f"the run in {origin} was trained with other settings, which continuing "
                         f"cannot change ({detail}); give the saved values or start over with "
                         "--mode new")
    before, after = flatten(saved), flatten(cfg)
    for key in changed:
        log.warning("setting %s changed on continue: %r -> %r", key, before[key], after[key])


def _plan_data(plan: Plan, resuming: bool) -> None:
    from ichseg.data.layouts import find_cases
    from ichseg.data.split import split_for
    from ichseg.device import pick_device
    from ichseg.models import check_input_shape
    from ichseg.models.ssm import resolve_backend

    cfg = plan.cfg
    index = find_cases(cfg.data.path, cfg.data.layout)
    if cfg.data.subtypes and index.label_mapping.binary:
        raise UsageError(f"setting data.subtypes=true needs labels that tell the subtypes "
                         f"apart, but {index.label_mapping.why_binary}")
    labelled = {case.case_id: case for case in index.cases if case.label is not None}
    if len(labelled) < 2:
        raise UsageError(f"dataset {cfg.data.path} needs at least two labelled cases to train "
                         f"and validate, found {len(labelled)}")
    split_path = plan.run_dir / SPLIT_FILE
    split = None
    if resuming:
        problem = f"split file {split_path} is missing"
        if split_path.is_file():
            try:
                split = read_split(split_path)
            except UsageError as exc:
                problem = str(exc)
        saved = (plan.checkpoint or {}).get("split")
        if split is None and saved is not None:
            # Every checkpoint carries the split it trained on: restored exactly, even when the
            # dataset gained or lost cases since.
            split = split_lists(saved)
            log.warning("%s; restored from the checkpoint %s and written again", problem,
                        plan.checkpoint_path)
        elif split is None:
            # A checkpoint from before it carried the split (or a legacy one): the split is a
            # function of the dataset's cases, the fraction and the seed, all known, and is
            # rebuilt as the run's start made it.
            log.warning("%s; it is rebuilt from the dataset, its data settings (fraction, fold, "
                        "patient grouping) and training.seed as the run made it at its start",
                        problem)
    if split is not None:
        missing = sorted(set(split["train"] + split["validation"]) - set(labelled))
        if missing:
            raise UsageError(f"cases {', '.join(missing[:5])} of {split_path} are not in the "
                             f"dataset {cfg.data.path}")
    else:
        split = split_for(list(labelled.values()), index.layout, cfg.data, cfg.training.seed)
    check_input_shape(cfg, cfg.data.patch_size)
    resolve_backend(cfg.model.scan_backend, pick_device(cfg.training.device))
    plan.split = split
    plan.cases = labelled
    plan.label_mapping = index.label_mapping


# --- doing it ---------------------------------------------------------------------------------

def _train(plan: Plan, deadline: float | None, train_log: TrainLog,
           ranks: distributed.Ranks, after_training: AfterTraining | None) -> TrainResult:
    from ichseg.data.cache import load_cases
    from ichseg.training.checkpoint import CheckpointManager
    from ichseg.training.init_from import apply_init_weights
    from ichseg.training.legacy import load_legacy
    from ichseg.training.lock import RunLock
    from ichseg.training.loop import Trainer
    from ichseg.training.signals import StopRequest

    cfg, run_dir = plan.cfg, plan.run_dir
    step = plan.checkpoint.get("step") if plan.checkpoint is not None else None
    distributed.same_on_every_rank((str(plan.checkpoint_path), step), "checkpoints to start from")
    ids = plan.split["train"] + plan.split["validation"]
    # Rank 0 decodes the dataset into the cache first; the other ranks then read the cache.
    prepared = distributed.in_turn(lambda: {c.case_id: c for c in load_cases(
        cfg.data, [plan.cases[i] for i in ids], progress=show_bars(cfg) and ranks.is_main,
        label_mapping=plan.label_mapping)})

    def prepare_run_folder(held: contextlib.ExitStack) -> None:
        # Rank 0 alone holds the lock and writes; a second job's rank 0 fails here, and
        # `on_main` makes every rank of that job exit 2 with its message.
        held.enter_context(RunLock(run_dir))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if plan.archive_first:
            _archive(run_dir, stamp)
        if plan.mode == "new" or plan.from_mirror is not None:
            with CheckpointManager(run_dir / "checkpoints", cfg.training.keep_checkpoints,
                                   cfg.training.mirror_dir or None) as checkpoints:
                if plan.mode == "new":  # else the old run's generations win a later continue
                    checkpoints.archive_mirror(stamp)
                else:
                    checkpoints.bring_home(plan.from_mirror)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        atomic_write_text(run_dir / SPLIT_FILE, json.dumps(plan.split, indent=1) + "\n")
        train_log.open(run_dir / TRAIN_LOG)

    with contextlib.ExitStack() as held:
        distributed.on_main(lambda: prepare_run_folder(held))
        trainer = Trainer(cfg, [prepared[i] for i in plan.split["train"]],
                          [prepared[i] for i in plan.split["validation"]], run_dir, plan.target,
                          rank=ranks.rank, world_size=ranks.world_size, split=plan.split)
        if plan.init_weights is not None:
            apply_init_weights(trainer.model, plan.init_weights)
        if plan.checkpoint is not None:
            if plan.legacy:
                load_legacy(trainer, plan.checkpoint, plan.checkpoint_path)
            else:
                trainer.load_state_dict(plan.checkpoint)
            if plan.restart_patience:
                trainer.early.restart()
            distributed.note_world_size(plan.checkpoint, cfg, ranks)
        _log_start(trainer, plan)
        try:
            with StopRequest() as stop:
                state = trainer.fit(stop, deadline)
        finally:
            trainer.checkpoints.close()
        # Before the main rank chooses the postprocessing alone: the others leave once it is
        # safe to, without waiting for that choice (which can outlast the group's timeout).
        distributed.meet_before_leaving()
        _log_end(trainer, state)
        if (state != "stopped" and ranks.is_main and after_training is not None
                and plan.split["validation"]):
            after_training(run_dir, cfg, not show_bars(cfg))
    return _result(plan, state, trainer.state_dict(), trainer.last_checkpoint)


def _log_start(trainer: Any, plan: Plan) -> None:
    from ichseg.models.ssm import resolve_backend

    p, cfg = trainer.progress, plan.cfg
    if plan.checkpoint is None:
        log.info("new run in %s: %d epochs of %d steps, preset %s", plan.run_dir, plan.target,
                 cfg.training.steps_per_epoch, cfg.preset)
    else:
        where = f"epoch {p.epoch + 1}" + (f", batch {p.epoch_step + 1}" if p.epoch_step else "")
        log.info("continuing %s from %s at %s (step %d), target %d epochs", plan.run_dir,
                 plan.checkpoint_path, where, p.step, plan.target)
    if cfg.training.time_limit:
        log.info("time limit %s (training.time_limit): the run saves and stops before it",
                 cfg.training.time_limit)
    fold = f" (fold {cfg.data.fold} of {cfg.data.folds})" if cfg.data.fold >= 0 else ""
    log.info("device %s, scan backend %s, %d training and %d validation cases%s", trainer.device,
             resolve_backend(cfg.model.scan_backend, trainer.device), len(plan.split["train"]),
             len(plan.split["validation"]), fold)


def _log_end(trainer: Any, state: str) -> None:
    p, early = trainer.progress, trainer.early
    best = f"best {early.judged} {early.best:.4f} at epoch {early.best_epoch}" \
        if early.best_epoch else "no validation yet"
    log.info("%s after %d of %d epochs; %s", state, p.epoch, trainer.target_epochs, best)


def _result(plan: Plan, state: str, checkpoint: dict[str, Any],
            last: Path | None) -> TrainResult:
    best = checkpoint.get("best_val")
    early = checkpoint.get("early_stopping") or {}
    return TrainResult(run_dir=plan.run_dir, state=state,
                       epochs_completed=int(checkpoint.get("epoch", 0)),
                       target_epochs=plan.target,
                       best_val=None if best is None or not math.isfinite(best) else float(best),
                       best_epoch=early.get("best_epoch") or None, last_checkpoint=last)


def _archive(run_dir: Path, stamp: str) -> Path:
    """Move everything of the run (not earlier archives, not the lock) to archive/<stamp>/."""
    from ichseg.training.lock import LOCK_FILE

    target = run_dir / ARCHIVE / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir / ARCHIVE / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for entry in sorted(run_dir.iterdir()):
        if entry.name not in (ARCHIVE, LOCK_FILE):
            shutil.move(str(entry), str(target / entry.name))
    log.warning("moved the previous run in %s to %s", run_dir, target)
    return target
