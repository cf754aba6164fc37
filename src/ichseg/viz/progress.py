"""RUN/progress.png: loss, validation Dice (mean of the cases, and pooled: raw and smoothed) and
learning rate per epoch, with the resumes and the epoch of best.pt marked.

The trainer calls `draw_progress` after every epoch (so it must be quick and leave no pyplot
state behind); `ichseg plot RUN` redraws the same picture from RUN/history.csv.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from ichseg.errors import UsageError
from ichseg.viz.figure import new_figure, save_figure


def _floats(values: Sequence[Any]) -> list[float]:
    """Numbers, with None, empty cells and unparsable text as NaN (a gap in the line)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _validated(epochs: Sequence[float], values: Sequence[float]) -> tuple[list, list]:
    kept = [(e, v) for e, v in zip(epochs, values, strict=True) if not math.isnan(v)]
    return [e for e, _ in kept], [v for _, v in kept]


def resume_epochs(epochs: Sequence[float], sessions: Sequence[Any]) -> list[float]:
    """Epochs at which a new session (a stop and a continue) began."""
    return [e for e, prev, cur in zip(epochs[1:], sessions, sessions[1:], strict=False)
            if cur != prev]


def draw_progress(history: Mapping[str, Sequence[Any]], path: str | Path,
                  select_by: str = "pooled_dice") -> Path:
    """Draw the run's curves to `path` (PNG, replaced atomically); return `path`. `select_by`
    is the run's `training.select_by`: the curve whose best epoch is best.pt's."""
    epochs = _floats(history.get("epoch") or range(1, len(history.get("train_loss", [])) + 1))
    column = {name: _floats(history.get(name, [math.nan] * len(epochs)))
              for name in ("train_loss", "val_loss", "val_dice", "val_pooled_dice",
                           "val_pooled_dice_smoothed", "lr")}
    resumes = resume_epochs(epochs, list(history.get("session", [])))

    fig = new_figure(12, 3.6)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.84, wspace=0.22)
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    marker = "o" if len(epochs) <= 30 else None
    axes[0].plot(epochs, column["train_loss"], marker=marker, ms=3, label="training loss")
    # Validation curves join the validated epochs (training.validate_every leaves NaN between).
    axes[0].plot(*_validated(epochs, column["val_loss"]), marker=marker, ms=3,
                 label="validation loss")
    axes[0].set_title("loss")
    axes[1].plot(*_validated(epochs, column["val_dice"]), marker=marker, ms=3, color="tab:green",
                 label="mean of the cases")
    if _validated(epochs, column["val_pooled_dice"])[0]:  # not in histories from before it
        axes[1].plot(*_validated(epochs, column["val_pooled_dice"]), color="tab:orange",
                     alpha=0.4, linewidth=1, label="pooled")
        axes[1].plot(*_validated(epochs, column["val_pooled_dice_smoothed"]), marker=marker,
                     ms=3, color="tab:orange", label="pooled, smoothed")
    axes[1].set_ylim(0.0, 1.0)
    axes[1].set_title("validation Dice")
    # The trainer keeps best.pt at the best value of the judged curve (its first epoch, ties kept).
    judged, axis, sign = (("val_pooled_dice_smoothed", axes[1], -1.0) if select_by == "pooled_dice"
                          else ("val_loss", axes[0], 1.0))
    values = [(sign * v, e, v) for v, e in zip(column[judged], epochs, strict=True)
              if not math.isnan(v)]
    if values:
        _, best_epoch, best = min(values)
        axis.scatter([best_epoch], [best], s=60, facecolors="none", edgecolors="black",
                     zorder=3, label=f"best.pt (epoch {best_epoch:g})")
    axes[2].plot(epochs, column["lr"], marker=marker, ms=3, color="tab:purple",
                 label="learning rate")
    if any(v > 0 for v in column["lr"]):
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        for i, epoch in enumerate(resumes):
            # A resume happens between the last epoch of one session and the first of the next.
            ax.axvline(epoch - 0.5, color="tab:red", linestyle="--", linewidth=1,
                       label="stopped and continued" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if ax is not axes[1] else "best")
    sessions = len(resumes) + 1 if epochs else 0
    fig.suptitle(f"{len(epochs)} epochs in {sessions} session{'s' if sessions != 1 else ''}",
                 fontsize=11)
    return save_figure(fig, path)


def read_history_csv(path: Path) -> dict[str, list[str]]:
    """RUN/history.csv -> column name -> list of cell texts."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns: dict[str, list[str]] = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            for name in columns:
                columns[name].append(row.get(name) or "")
    return columns


def plot_run(run_dir: str | Path) -> Path:
    """Redraw RUN/progress.png from RUN/history.csv; return its path."""
    run_dir = Path(run_dir)
    history_path = run_dir / "history.csv"
    if not history_path.is_file():
        raise UsageError(f"run folder {run_dir} has no history.csv: no epoch has finished yet")
    try:
        history = read_history_csv(history_path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"history file {history_path} cannot be read: {exc}") from None
    if "train_loss" not in history or not history["train_loss"]:
        raise UsageError(f"history file {history_path} holds no epochs (no train_loss rows)")
    return draw_progress(history, run_dir / "progress.png", _select_by(run_dir, history))


def _select_by(run_dir: Path, history: Mapping[str, Sequence[Any]]) -> str:
    """The run's `training.select_by`; without a readable config.yaml, a history with no pooled
    Dice is from before it (and judged its loss)."""
    from ichseg.config import read_run_config

    try:
        return read_run_config(run_dir / "config.yaml").training.select_by
    except UsageError:
        smoothed = _floats(history.get("val_pooled_dice_smoothed", []))
        return "val_loss" if all(math.isnan(v) for v in smoothed) else "pooled_dice"
