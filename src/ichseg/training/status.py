"""`ichseg status RUN` and `ichseg.check_training_status`: where a run stands, read-only.

Everything comes from the run folder: config.yaml, the newest valid checkpoint (its epoch, step,
early-stopping state, learning rate and history) and the checkpoint manifest's verdicts. The lock
file tells whether a trainer is working in the folder right now.
"""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

from ichseg.errors import UsageError
from ichseg.training.progress import JUDGED

log = logging.getLogger(__name__)


def training_status(run_dir: str | Path) -> dict[str, Any]:
    """A JSON-serialisable summary of the run in `run_dir`; see `format_status` for the fields."""
    from ichseg.config import read_run_config
    from ichseg.training.checkpoint import CheckpointManager
    from ichseg.training.lock import lock_held
    from ichseg.training.run_folder import CONFIG_FILE

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not (config_path.is_file() or (run_dir / "checkpoints").is_dir()):
        raise UsageError(f"{run_dir} is not a training run folder (it has no {CONFIG_FILE} and "
                         "no checkpoints/)")
    cfg = read_run_config(config_path) if config_path.is_file() else None
    manager = CheckpointManager(run_dir / "checkpoints",
                                keep=cfg.training.keep_checkpoints if cfg else 3,
                                mirror_dir=(cfg.training.mirror_dir or None) if cfg else None)
    try:
        loaded = manager.load_latest(copy_back=False)  # status never writes
        problem = None
    except UsageError as exc:  # every checkpoint damaged: still worth a status
        loaded, problem = None, str(exc)
    state = loaded.state if loaded else {}
    saved_cfg = state.get("config") or (cfg.to_dict() if cfg else {})
    training = saved_cfg.get("training", {})
    steps_per_epoch = int(training.get("steps_per_epoch", 0)) or None
    target = int(cfg.training.epochs if cfg else training.get("epochs", 0))
    epoch = int(state.get("epoch", 0))
    early = state.get("early_stopping") or {}
    progress = state.get("progress") or {}
    history = state.get("history") or {}

    if lock_held(run_dir):
        run_state = "running"
    elif not state:
        run_state = "not started"
    elif early.get("early_stopped"):
        run_state = "early-stopped"
    elif epoch >= target:
        run_state = "finished"
    else:
        run_state = "stopped"

    seconds = [s for s in history.get("epoch_seconds", []) if _finite(s)]
    per_epoch = sum(seconds) / len(seconds) if seconds else None
    done_fraction = epoch + (int(state.get("epoch_step", 0)) / steps_per_epoch
                             if steps_per_epoch else 0.0)
    remaining = max(target - done_fraction, 0.0)
    eta = per_epoch * remaining if per_epoch is not None and run_state in ("running", "stopped") \
        else None
    groups = (state.get("optimizer_state") or {}).get("param_groups") or [{}]
    best_val = state.get("best_val")

    return {
        "run_dir": str(run_dir),
        "state": run_state,
        "epochs_completed": epoch,
        "target_epochs": target,
        "epoch_step": int(state.get("epoch_step", 0)),
        "steps_per_epoch": steps_per_epoch,
        "step": int(state.get("step", 0)),
        "best_val": float(best_val) if _finite(best_val) else None,
        "best_epoch": early.get("best_epoch") or None,
        "no_improve": int(state.get("no_improve", 0) or 0),
        "patience": int(cfg.training.patience) if cfg else training.get("patience"),
        "min_epochs": int(cfg.training.min_epochs) if cfg else training.get("min_epochs", 0),
        # A checkpoint without a rule is from before the pooled Dice: it judges the loss.
        "select_by": early.get("rule", "val_loss") if state else (
            cfg.training.select_by if cfg else None),
        "lr": groups[0].get("lr"),
        "time_trained_s": progress.get("train_seconds"),
        "eta_s": eta,
        "last_val_dice": _last_finite(history.get("val_dice", [])),
        "last_val_pooled_dice": _last_finite(history.get("val_pooled_dice", [])),
        "last_val_pooled_dice_smoothed": _last_finite(history.get("val_pooled_dice_smoothed",
                                                                   [])),
        "checkpoint": str(loaded.path) if loaded else None,
        "checkpoint_problem": problem,
        "checkpoints": [_plain(row) for row in manager.generations()],
        "continue_command": _continue_command(run_dir, run_state, target),
    }


def _continue_command(run_dir: Path, run_state: str, target: int) -> str:
    command = f"ichseg train --run-dir {shlex.quote(str(run_dir.resolve()))}"
    if run_state in ("finished", "early-stopped"):
        return f"{command} --additional-epochs 10"
    return command


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _last_finite(values: list[Any]) -> float | None:
    finite = [v for v in values if _finite(v)]
    return float(finite[-1]) if finite else None


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def format_status(status: dict[str, Any]) -> str:
    """The human-readable status that `ichseg status RUN` prints."""
    s = status
    lines = [f"run        {s['run_dir']}", f"state      {s['state']}"]
    epoch_line = f"epochs     {s['epochs_completed']} of {s['target_epochs']}"
    if s["epoch_step"] and s["steps_per_epoch"]:
        epoch_line += (f" (+ {s['epoch_step']}/{s['steps_per_epoch']} batches of epoch "
                       f"{s['epochs_completed'] + 1})")
    lines += [epoch_line, f"steps      {s['step']}"]
    if s["best_val"] is not None:
        judged = JUDGED.get(s["select_by"], "validation value")
        dice = f", last validation Dice {s['last_val_dice']:.4f}" \
            if s["last_val_dice"] is not None else ""
        if s["last_val_pooled_dice"] is not None:
            dice += (f", pooled {s['last_val_pooled_dice']:.4f} (smoothed "
                     f"{s['last_val_pooled_dice_smoothed']:.4f})")
        lines.append(f"best       {judged} {s['best_val']:.4f} at epoch {s['best_epoch']}{dice}")
    patience = s["patience"]
    counted = f" (counted after epoch {s['min_epochs']})" if patience and s["min_epochs"] else ""
    lines.append(f"early stop {s['no_improve']} validations without improvement, patience "
                 f"{patience if patience else 'off'}{counted}")
    if s["lr"] is not None:
        lines.append(f"lr         {s['lr']:.3g}")
    lines.append(f"trained    {_duration(s['time_trained_s'])}")
    if s["eta_s"] is not None:
        lines.append(f"remaining  about {_duration(s['eta_s'])}")
    if s["checkpoint_problem"]:
        lines.append(f"problem    {s['checkpoint_problem']}")
    lines.append("checkpoints:")
    for row in s["checkpoints"]:
        where = "" if row.get("location") == "local" else f" [{row.get('location')}]"
        epoch = f"epoch {row['epoch']}, step {row['step']}" if row.get("epoch") is not None else ""
        lines.append(f"  {row['file']:<16} {_size(row.get('size')):>9}  "
                     f"{_duration(row.get('age_s'))} old  {epoch:<20} {row['verdict']}{where}")
    if not s["checkpoints"]:
        lines.append("  none")
    lines.append(f"continue   {s['continue_command']}")
    return "\n".join(lines)
