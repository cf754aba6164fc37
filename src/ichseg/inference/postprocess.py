"""Postprocessing chosen on the validation cases, as nnU-Net chooses it.

Small specks far from any bleed are counted as lesions (lesion F1 falls) and stretch the
Hausdorff distance; removing connected components below a volume, or keeping only the largest,
cleans them up, but can also delete a small real bleed. So the choice is measured, not assumed:
the run's model (`best`, as predict uses it, with the run's `inference.tta`) segments each
validation case on its own voxel grid, each candidate is applied, and the candidate kept is the
one with the highest mean Dice (then lesion F1, then the lowest maximum Hausdorff distance) among
those whose mean Dice and mean lesion F1 are at least, and mean maximum HD at most, those of no
postprocessing. Ties go to the candidate listed first (the mildest), so "none" stays unless
something is better. The guard on HD matters: removing a small component that is real (a
fragment of a subarachnoid bleed) leaves that fragment of the ground truth far from any
prediction, which Dice hardly sees but the maximum HD does.

The choice is measured on predictions made as predict will make them: mirror TTA removes most
single-pass specks by itself, so a choice made without it over-cleans predictions made with it.
The record says which (`tta`), and predict says so when it predicts otherwise.

Candidates, on the hemorrhage mask (any label > 0; a removed component loses all its labels),
with lesions as lesion F1 counts them (26-connected): none; remove components below 0.1, 0.25,
0.5, 1 and 2 mL; keep the largest component. The choice is written to RUN/postprocessing.json
(atomically), with every candidate's scores, and `predict` applies it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ichseg.data.masks import bounding_box, label_lesions, largest_lesion
from ichseg.errors import UsageError

log = logging.getLogger("ichseg.postprocess")

POSTPROCESSING_FILE = "postprocessing.json"
MIN_LESION_ML = (0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Postprocessing:
    """Remove hemorrhage components below `min_lesion_ml` mL and/or keep only the largest."""

    min_lesion_ml: float = 0.0
    keep_largest: bool = False

    @property
    def name(self) -> str:
        if self.keep_largest:
            return "keep the largest lesion"
        if self.min_lesion_ml > 0:
            return f"remove lesions below {self.min_lesion_ml:g} mL"
        return "none"

    def apply(self, labels: np.ndarray, voxel_volume_mm3: float) -> np.ndarray:
        """The label map with the removed components set to 0 (a new array when anything is
        removed, `labels` itself otherwise)."""
        if self.name == "none" or not labels.any():
            return labels
        box = bounding_box(labels > 0)
        inside = labels[box]
        if self.keep_largest:
            removed = (inside > 0) & ~largest_lesion(inside > 0)
        else:
            components, sizes = label_lesions(inside > 0)
            small = np.flatnonzero(sizes * voxel_volume_mm3 / 1000.0 < self.min_lesion_ml) + 1
            if small.size == 0:
                return labels
            removed = np.isin(components, small)
        if not removed.any():
            return labels
        result = labels.copy()
        result[box][removed] = 0
        return result


NONE = Postprocessing()
CANDIDATES = (NONE, *(Postprocessing(min_lesion_ml=v) for v in MIN_LESION_ML),
              Postprocessing(keep_largest=True))


def run_of_checkpoint(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to (RUN/checkpoints/<file>), else its folder."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint.parent


class RecordedChoice(NamedTuple):
    """A run's RUN/postprocessing.json as predict needs it."""

    postprocessing: Postprocessing
    path: str
    tta: bool | None  # whether it was chosen on TTA predictions (None: a record before the key)
    runs: tuple[str, ...]  # the runs that chose together (empty: this run alone)


def read_postprocessing(run_dir: str | Path) -> RecordedChoice | None:
    """The run's recorded choice, or None when it has none."""
    path = Path(run_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        chosen = record["chosen"]
        return RecordedChoice(Postprocessing(min_lesion_ml=float(chosen["min_lesion_ml"]),
                                             keep_largest=bool(chosen["keep_largest"])),
                              str(path), record.get("tta"), tuple(record.get("runs", ())))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"postprocessing file {path} cannot be read ({exc}); run "
                         f"`ichseg postprocess {run_dir}` again") from None


SCORES = ("dice", "lesion_f1", "hd_max")


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean Dice, lesion F1 and maximum HD of one candidate over the validation cases."""
    return {k: float(np.mean([s[k] for s in scores])) for k in SCORES}


def pick(summaries: Sequence[dict[str, float]]) -> int:
    """Index of the chosen candidate, given each one's mean `dice`, `lesion_f1` and `hd_max`
    (the first is no postprocessing): see the module docstring."""
    base = summaries[0]

    def rank(s: dict[str, float]) -> tuple[float, float, float]:
        return s["dice"], s["lesion_f1"], -s["hd_max"]

    best = 0
    for i, s in enumerate(summaries):
        if s["dice"] >= base["dice"] and s["lesion_f1"] >= base["lesion_f1"] and \
                s["hd_max"] <= base["hd_max"] and rank(s) > rank(summaries[best]):
            best = i
    return best


def for_predictor(predictor: Any, enabled: bool, tta: bool) -> tuple[Postprocessing, str]:
    """(the postprocessing predict applies, where it comes from): the choice recorded in the
    predictor's run folder, or none (turned off, or never chosen). An ensemble applies one only
    when its members' runs chose it together (`ichseg postprocess RUN...`). The origin warns
    when the choice was made on predictions with(out) TTA and predict runs without (with) it."""
    if not enabled:
        return NONE, "turned off"
    runs = [run_of_checkpoint(member.source) for member in predictor.members]
    recorded = [read_postprocessing(run_dir) for run_dir in runs]
    if len(runs) > 1:
        together = all(r is not None and {str(d.resolve()) for d in runs} <= set(r.runs)
                       for r in recorded)
        if not together or len({(r.postprocessing, r.tta) for r in recorded}) != 1:
            # Each member chose on its own validation cases; no single choice fits their average.
            return NONE, ("not applied to an ensemble whose runs did not choose together: "
                          f"`ichseg postprocess {' '.join(str(r) for r in runs)}` chooses one")
    choice = recorded[0]
    if choice is None:
        return NONE, f"none chosen for {runs[0]}: `ichseg postprocess {runs[0]}` chooses one"
    caution = ""
    if choice.tta is not None and choice.tta != tta:
        caution = (f"; note: chosen on predictions {'with' if choice.tta else 'without'} "
                   f"TTA, these are {'with' if tta else 'without'} it")
    where = f"the pooled validation cases of {len(choice.runs)} runs" if choice.runs else \
        "the validation cases"
    return choice.postprocessing, f"chosen on {where}, {choice.path}{caution}"


def format_choice(record: dict[str, Any]) -> str:
    """The choice and every candidate's validation scores, as a console table."""
    lines = [f"{'candidate':<28}{'Dice':>9}{'lesion F1':>11}{'max HD mm':>11}"]
    for c in record["candidates"]:
        mark = "  <- chosen" if c["name"] == record["chosen"]["name"] else ""
        lines.append(f"{c['name']:<28}{c['dice']:>9.4f}{c['lesion_f1']:>11.4f}"
                     f"{c.get('hd_max', float('nan')):>11.2f}{mark}")
    tta = {True: ", mirror TTA", False: ", no TTA"}.get(record.get("tta"), "")
    pooled = record.get("pooled_validation_cases")
    if pooled:
        where = (f"on {sum(len(v) for v in pooled.values())} validation case(s) of {len(pooled)} "
                 f"runs, each with its own best model{tta}")
    else:
        where = (f"on {len(record['validation_cases'])} validation case(s) with "
                 f"{record['checkpoint']}{tta}")
    lines.append(f"{where}; rule: {record['rule']}")
    return "\n".join(lines)
