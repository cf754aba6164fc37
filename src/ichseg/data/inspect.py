"""`ichseg inspect`: the dataset fingerprint, and the per-case checks the training loader shares.

The fingerprint is what nnU-Net's `plan_and_preprocess` would tell a user before training:
shapes, spacings, the HU range, the label values and hemorrhage volumes, the foreground HU
statistics, and every problem found, each naming its file. `inspect` reports problems rather
than stopping at the first, so a user fixes them all in one pass; `validate_case` is the same
check for one case, for loaders that must refuse a bad case.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ichseg.config import DataConfig
from ichseg.data.io import Volume, label_values, read_label, read_nifti
from ichseg.data.layouts import CODES, LABEL_MAPPINGS, Case, LabelMapping, find_cases
from ichseg.errors import UsageError

# Label and image grids agree when their affines differ by less than this (mm, and mm per voxel
# in the direction columns): float32 header storage alone leaves differences near 1e-5.
AFFINE_TOLERANCE_MM = 1e-3

# Like nnU-Net's fingerprint: a fixed number of foreground voxels per case, so large cases do not
# dominate the foreground intensity statistics.
FOREGROUND_SAMPLES_PER_CASE = 10_000


@dataclass
class CaseCheck:
    """What reading one case found: the volumes that could be read, problems and warnings."""

    image: Volume | None = None
    label: Volume | None = None
    label_values: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def label_fits(self) -> bool:
        """The label was read and lies on the image's grid with allowed values."""
        return self.image is not None and self.label is not None and not self.problems


def _read(reader, path: Path, check: CaseCheck, max_voxels: int) -> Volume | None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            volume = reader(path, max_voxels)
        except UsageError as exc:
            check.problems.append(str(exc))
            volume = None
    check.warnings.extend(str(w.message) for w in caught)
    return volume


def check_case(case: Case, mapping: LabelMapping = LABEL_MAPPINGS["generic"],
               max_voxels: int = DataConfig.max_voxels) -> CaseCheck:
    """Read one case and check it: readable files of at most `max_voxels` voxels
    (`data.max_voxels`), no NaNs, the label on the image's grid (same shape and affine) and only
    the values `mapping` allows."""
    check = CaseCheck()
    check.image = _read(read_nifti, case.image, check, max_voxels)
    if case.label is None:
        return check
    check.label = _read(read_label, case.label, check, max_voxels)
    image, label = check.image, check.label
    if label is not None:
        check.label_values = label_values(label.array)
        invalid = mapping.invalid_values(check.label_values)
        if invalid:
            check.problems.append(f"label {case.label} holds values {invalid} outside the "
                                  f"allowed codes ({mapping.description})")
    if image is None or label is None:
        return check
    if image.array.shape != label.array.shape:
        check.problems.append(f"label {case.label} has shape {label.array.shape}, unlike its "
                              f"image {case.image.name} {image.array.shape}")
    else:
        difference = float(np.abs(image.affine - label.affine).max())
        if difference > AFFINE_TOLERANCE_MM:
            check.problems.append(f"label {case.label} has another affine than its image "
                                  f"{case.image.name} (entries differ by up to {difference:.3g})")
    return check


def validate_case(case: Case, mapping: LabelMapping = LABEL_MAPPINGS["generic"]) -> list[str]:
    """The problems of one case, one sentence each naming its file; empty when it is usable."""
    return check_case(case, mapping).problems


def _range_summary(rows: list) -> dict[str, list[float]]:
    """Per-axis median, min and max of a list of shapes or spacings."""
    table = np.asarray(rows, dtype=np.float64)
    return {"median": [float(v) for v in np.median(table, axis=0)],
            "min": [float(v) for v in table.min(axis=0)],
            "max": [float(v) for v in table.max(axis=0)]}


def _case_report(case: Case, check: CaseCheck, mapping: LabelMapping) -> dict[str, Any]:
    image, label = check.image, check.label
    entry: dict[str, Any] = {"case": case.case_id, "image": str(case.image),
                             "label": str(case.label) if case.label else None}
    if image is not None:
        p_low, p_mid, p_high = np.percentile(image.array, [0.5, 50.0, 99.5])
        entry.update(shape=[int(n) for n in image.array.shape],
                     spacing=[round(s, 4) for s in image.spacing],
                     hu={"min": float(image.array.min()), "max": float(image.array.max()), "p0.5": float(p_low), "median": float(p_mid),
                         "p99.5": float(p_high)})
    if label is not None:
        entry["label_values"] = check.label_values
    if check.label_fits:
        codes = mapping.to_codes(label.array)
        ml_per_voxel = image.voxel_volume_mm3 / 1000.0
        entry["hemorrhage_ml"] = float(np.count_nonzero(codes) * ml_per_voxel)
        if not mapping.binary:
            counts = np.bincount(codes.ravel(), minlength=len(CODES))
            entry["hemorrhage_ml_per_class"] = {CODES[code]: float(counts[code] * ml_per_voxel)
                                                for code in range(1, len(CODES))}
    return entry


def _foreground_sample(check: CaseCheck, mapping: LabelMapping, seed: int) -> np.ndarray:
    """Up to FOREGROUND_SAMPLES_PER_CASE hemorrhage HU values, drawn reproducibly."""
    values = check.image.array[mapping.to_codes(check.label.array) > 0]
    if values.size > FOREGROUND_SAMPLES_PER_CASE:
        rng = np.random.default_rng(seed)
        values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return values


def _slice_flag_summary(slice_flags: dict[str, dict[int, dict[str, int]]]) -> dict[str, Any]:
    """How many CSV slices carry each flag (PhysioNet's per-slice subtypes)."""
    totals: dict[str, int] = {}
    for slices in slice_flags.values():
        for flags in slices.values():
            for name, value in flags.items():
                totals[name] = totals.get(name, 0) + int(value > 0)
    return {"cases": len(slice_flags),
            "slices": sum(len(s) for s in slice_flags.values()),
            "slices_flagged": totals}


def fingerprint(data: str | Path, layout: str = "auto", progress: bool = True) -> dict[str, Any]:
    """The dataset fingerprint (JSON-serialisable). Raises UsageError only when `data` holds no
    readable dataset at all; bad individual files are listed in `problems`."""
    index = find_cases(data, layout, strict=False)
    mapping = index.label_mapping
    problems = list(index.problems)
    notes: list[str] = []
    cases, foreground = [], []
    for i, case in enumerate(tqdm(index.cases, desc="inspect", unit="case",
                                  disable=None if progress else True)):
        check = check_case(case, mapping)
        problems.extend(check.problems)
        notes.extend(check.warnings)
        cases.append(_case_report(case, check, mapping))
        if check.label_fits:
            foreground.append(_foreground_sample(check, mapping, seed=i))

    read = [c for c in cases if "shape" in c]
    summary: dict[str, Any] = {"cases_read": len(read)}
    if read:
        summary["shape"] = _range_summary([c["shape"] for c in read])
        summary["spacing"] = _range_summary([c["spacing"] for c in read])
        summary["hu_range"] = [min(c["hu"]["min"] for c in read), max(c["hu"]["max"] for c in read)]
    summary["label_values"] = sorted({v for c in cases for v in c.get("label_values", [])})
    volumes = [c["hemorrhage_ml"] for c in cases if "hemorrhage_ml" in c]
    if volumes:
        summary["hemorrhage_ml"] = {"median": float(np.median(volumes)),
                                    "min": float(min(volumes)), "max": float(max(volumes))}
        summary["cases_with_hemorrhage"] = sum(v > 0 for v in volumes)
    pooled = np.concatenate(foreground) if foreground else np.empty(0, np.float32)
    if pooled.size:
        summary["foreground_hu"] = {
            "mean": float(pooled.mean()), "std": float(pooled.std()),
            "median": float(np.median(pooled)), "min": float(pooled.min()),
            "max": float(pooled.max()),
            "percentile_00_5": float(np.percentile(pooled, 0.5)),
            "percentile_99_5": float(np.percentile(pooled, 99.5))}

    report: dict[str, Any] = {"layout": index.layout, "root": str(index.root),
                              "num_cases": len(index.cases), "label_mapping": mapping.description,
                              # Whether `train` takes data.subtypes=true here, else why not.
                              "subtypes": not mapping.binary, "subtypes_note": mapping.why_binary,
                              "cases": cases, "summary": summary}
    if "slice_flags" in index.extras:
        report["slice_flags"] = {"file": index.extras["slice_flags_file"],
                                 **_slice_flag_summary(index.extras["slice_flags"])}
    report["problems"] = problems
    report["warnings"] = notes
    return report


def _triple(values: list[float], digits: int = 3) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def format_fingerprint(report: dict[str, Any]) -> str:
    """The fingerprint as a readable table for the console."""
    lines = [f"dataset   {report['root']}",
             f"layout    {report['layout']}  (labels: {report['label_mapping']})",
             f"subtypes  {'yes' if report['subtypes'] else 'no: ' + report['subtypes_note']}",
             f"cases     {report['num_cases']}", ""]
    header = f"{'case':<16} {'shape':<16} {'spacing (mm)':<20} {'HU min..max':<16} " \
             f"{'labels':<14} {'blood mL':>9}"
    lines += [header, "-" * len(header)]
    for c in report["cases"]:
        shape = " x ".join(str(n) for n in c["shape"]) if "shape" in c else "unreadable"
        spacing = _triple(c["spacing"]) if "spacing" in c else ""
        hu = f"{c['hu']['min']:.0f}..{c['hu']['max']:.0f}" if "hu" in c else ""
        labels = ",".join(str(v) for v in c.get("label_values", [])) or "-"
        blood = f"{c['hemorrhage_ml']:.2f}" if "hemorrhage_ml" in c else "-"
        lines.append(f"{c['case']:<16} {shape:<16} {spacing:<20} {hu:<16} {labels:<14} {blood:>9}")

    s = report["summary"]
    lines += ["", "summary"]
    if "shape" in s:
        for key, unit, digits in (("shape", "voxels", 4), ("spacing", "mm", 3)):
            lines.append(f"  {key:<10} median {_triple(s[key]['median'], digits)}, "
                         f"min {_triple(s[key]['min'], digits)}, "
                         f"max {_triple(s[key]['max'], digits)} {unit}")
        lines.append(f"  HU range   {s['hu_range'][0]:.0f} to {s['hu_range'][1]:.0f}")
    lines.append(f"  labels     {', '.join(str(v) for v in s['label_values']) or 'none read'}")
    if "hemorrhage_ml" in s:
        h = s["hemorrhage_ml"]
        lines.append(f"  blood      {s['cases_with_hemorrhage']} of {len(report['cases'])} cases; "
                     f"median {h['median']:.2f} mL (min {h['min']:.2f}, max {h['max']:.2f})")
    if "foreground_hu" in s:
        f = s["foreground_hu"]
        lines.append(f"  blood HU   mean {f['mean']:.1f}, std {f['std']:.1f}, p0.5 "
                     f"{f['percentile_00_5']:.1f}, p99.5 {f['percentile_99_5']:.1f}")
    if "slice_flags" in report:
        sf = report["slice_flags"]
        flagged = ", ".join(f"{k} {v}" for k, v in sf["slices_flagged"].items())
        lines.append(f"  slice CSV  {sf['slices']} slices of {sf['cases']} cases: {flagged}")
    for title, items in (("warnings", report["warnings"]), ("problems", report["problems"])):
        if items:
            lines += ["", f"{title} ({len(items)})"] + [f"  - {item}" for item in items]
    if not report["problems"]:
        lines += ["", "no problems found"]
    return "\n".join(lines)
