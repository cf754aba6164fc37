"""`ichseg synth`: a dataset of synthetic cases in the generic layout, its geometry checked."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ichseg.data.io import nifti_files, nifti_stem, write_nifti
from ichseg.data.synth.case import DEFAULT_SHAPE, DEFAULT_SPACING, make_case
from ichseg.data.synth.tissues import LABELS
from ichseg.errors import UsageError
from ichseg.fileio import atomic_write_text
from ichseg.processes import run_jobs, usable_cpus

FIELD_OF_VIEW_MM = 230.0  # in-plane, when only one of shape and spacing is given
SCAN_LENGTH_MM = 160.0  # along z, when only the spacing is given
MIN_FIELD_OF_VIEW_MM = 200.0  # a head is up to ~196 mm front to back
MIN_SHAPE = (24, 24, 2)
# Cases are drawn in this many processes at most (one per CPU below it): each case is its own
# (seed, index) draw, so the processes change no voxel.
MAX_SYNTH_WORKERS = 4


def resolve_geometry(shape: Sequence[int] | None,
                     spacing: Sequence[float] | None) -> tuple[tuple[int, int, int],
                                                               tuple[float, float, float]]:
    """Fill in shape or spacing, keeping the field of view a head's, and validate both."""
    if shape is not None and len(shape) != 3:
        raise UsageError(f"--shape needs three sizes X Y Z, got {list(shape)}.")
    if spacing is not None and len(spacing) != 3:
        raise UsageError(f"--spacing needs three values SX SY SZ in mm, got {list(spacing)}.")
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UsageError(f"--spacing must be three positive sizes in mm, got {list(spacing)}.")
    if shape is None and spacing is None:
        shape, spacing = DEFAULT_SHAPE, DEFAULT_SPACING
    elif spacing is None:
        spacing = (FIELD_OF_VIEW_MM / shape[0], FIELD_OF_VIEW_MM / shape[1], DEFAULT_SPACING[2])
    elif shape is None:
        shape = (math.ceil(FIELD_OF_VIEW_MM / spacing[0]), math.ceil(FIELD_OF_VIEW_MM / spacing[1]),
                 max(MIN_SHAPE[2], round(SCAN_LENGTH_MM / spacing[2])))
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if any(n < m for n, m in zip(shape, MIN_SHAPE, strict=True)):
        raise UsageError(f"--shape {' '.join(map(str, shape))} is too small for a head: "
                         f"use at least {' '.join(map(str, MIN_SHAPE))} voxels.")
    fov = [n * s for n, s in zip(shape[:2], spacing[:2], strict=True)]
    if min(fov) < MIN_FIELD_OF_VIEW_MM:
        raise UsageError(f"--shape {' '.join(map(str, shape))} at --spacing "
                         f"{' '.join(f'{s:g}' for s in spacing)} covers {fov[0]:.0f} x {fov[1]:.0f} mm"
                         f" in-plane; a head needs at least {MIN_FIELD_OF_VIEW_MM:.0f} mm.")
    return shape, spacing


def _whole_number(value: object, key: str, minimum: int) -> int:
    try:
        number = operator.index(value)  # ints and NumPy integers, not floats or bools
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise UsageError(f"{key} must be a whole number of at least {minimum}, got {value!r}.")
    return number


def _check_destination(out: Path, ids: list[str]) -> None:
    """Refuse an OUT that cannot hold the dataset, or that holds other scans, before writing.

    Other NIfTI files in OUT/images or OUT/labels (a real dataset, or the extra cases of an
    earlier, larger synth run) would be read as part of this dataset.
    """
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{existing} is a file; synth needs a folder there.")
    if (out / "dataset.json").is_dir():
        raise UsageError(f"{out / 'dataset.json'} is a folder; synth writes a file there.")
    for folder in (out / "images", out / "labels"):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file; synth needs a folder there.")
        if folder.is_dir():
            others = [p for p in nifti_files(folder) if nifti_stem(p.name) not in ids]
            if others:
                raise UsageError(f"{others[0]} is not one of the {len(ids)} cases to write; "
                                 "give synth an empty or new folder.")


def case_ids(cases: int) -> list[str]:
    width = max(3, len(str(cases - 1)))
    return [f"synth_{k:0{width}d}" for k in range(cases)]


def _write_case(out: Path, case_id: str, seed: int, shape: Sequence[int],
                spacing: Sequence[float], index: int) -> None:
    case = make_case(seed, shape, spacing, index=index)
    write_nifti(out / "images" / f"{case_id}.nii.gz", case.hu, case.affine)
    write_nifti(out / "labels" / f"{case_id}.nii.gz", case.label, case.affine)


def write_dataset(out_dir: str | Path, cases: int, seed: int = 0,
                  shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None) -> list[str]:
    """Write `cases` synthetic cases as NIfTI in the generic layout; return their ids.

    `OUT/images/<case>.nii.gz` (int16 HU), `OUT/labels/<case>.nii.gz` (uint8 codes) and an
    nnU-Net-style `OUT/dataset.json` that also records the seed, shape and spacing used.
    """
    out = Path(out_dir)
    cases = _whole_number(cases, "--cases", minimum=1)
    seed = _whole_number(seed, "--seed", minimum=0)
    shape, spacing = resolve_geometry(shape, spacing)
    ids = case_ids(cases)
    _check_destination(out, ids)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    workers = min(MAX_SYNTH_WORKERS, usable_cpus(), cases)
    jobs = [(out, case_id, seed, shape, spacing, index) for index, case_id in enumerate(ids)]
    with tqdm(total=cases, desc="synth", unit="case", disable=None) as bar:
        run_jobs(_write_case, jobs, workers, bar)
    description = {
        "name": "ichseg-synth",
        "description": "Synthetic non-contrast head CT with intracranial hemorrhage (ichseg synth)",
        "tensorImageSize": "3D",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "training": [{"case": c, "image": f"./images/{c}.nii.gz", "label": f"./labels/{c}.nii.gz"}
                     for c in ids],
        "seed": seed,
        "shape": list(shape),
        "spacing": list(spacing),
    }
    atomic_write_text(out / "dataset.json", json.dumps(description, indent=2) + "\n")
    return ids
