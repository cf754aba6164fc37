"""The per-epoch record of a run: metric name -> list, one value per completed epoch.

The same dict is stored in every checkpoint (key `history`) and mirrored to `RUN/history.csv`, so
a run continued from a checkpoint carries its whole past. Columns beyond the standard ones (for
example those of a legacy checkpoint) are kept as they are.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ichseg.fileio import atomic_write_text

# val_dice: the mean of the validation cases' Dice; val_pooled_dice: the Dice of all their voxels
# pooled, and val_pooled_dice_smoothed its moving average over validations (what `best` follows
# unless the run judges by val_loss). A history from before a column has NaN in it.
COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_pooled_dice",
           "val_pooled_dice_smoothed", "lr", "epoch_seconds", "session")


class History:
    """Columns of equal length; `append` adds one epoch's row."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["epoch"])

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"history has no column {sorted(unknown)}")
        for name, values in self.columns.items():
            values.append(row.get(name, math.nan))

    def last(self, name: str, default: Any = None) -> Any:
        values = self.columns.get(name) or []
        return values[-1] if values else default

    def state_dict(self) -> dict[str, list[Any]]:
        return {name: list(values) for name, values in self.columns.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a saved history, the legacy kind included (its own column names, no `epoch`)."""
        lengths = {len(v) for v in state.values() if isinstance(v, (list, tuple))}
        rows = max(lengths, default=0)
        columns: dict[str, list[Any]] = {}
        for name in (*COLUMNS, *state):
            values = state.get(name)
            if isinstance(values, (list, tuple)):
                columns[name] = [_plain(v) for v in values] + [math.nan] * (rows - len(values))
            elif name == "epoch":
                columns[name] = list(range(1, rows + 1))
            elif name in COLUMNS:
                columns[name] = [math.nan] * rows
        self.columns = columns

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(zip(*self.columns.values(), strict=True))
        return buffer.getvalue()

    def write_csv(self, path: str | Path) -> None:
        """Replace `path` atomically, so a reader (or a kill) never sees half a file."""
        atomic_write_text(path, self.to_csv())


def _plain(value: Any) -> Any:
    """Tensors and NumPy scalars from old checkpoints -> Python numbers."""
    return value.item() if hasattr(value, "item") else value
