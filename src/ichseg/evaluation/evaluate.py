"""`ichseg evaluate`: predicted label maps against ground truth, case by case, with a summary.

Pairs are matched by case id (the file name without `.nii` / `.nii.gz`). The ground truth is
read through its dataset's label mapping when the folder is a layout's label folder (PhysioNet's
`masks/` 0/255, an nnU-Net `labelsTr/` numbered by its dataset.json...), as training reads it;
any other folder holds the contract's codes. Every case is scored for "any hemorrhage"
(label > 0); whenever the ground truth has subtypes (a subtype layout, or some code above 1) and
the predictions do too (a code above 1, or a subtype model's volumes.csv beside them), each
subtype is scored as well. A binary model's code 1 is "any hemorrhage", not EDH, so against
subtype labels it is scored as any hemorrhage only. Summaries are the mean and median over cases,
skipping undefined values (a relative volume difference against an empty ground truth).
The report names the definitions used (`metrics.DEFINITIONS`, with the NSD tolerance). Per-subtype
summaries count only the cases where that subtype occurs in the ground truth or the prediction:
a subtype absent from both would otherwise add a perfect score by convention and hide the misses.

Nothing is written until every pair has been read and checked, so a missing pair or a shape or
affine mismatch (a UsageError naming the file) leaves `out_dir` untouched.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ichseg.data.io import Volume, nifti_files, nifti_stem, read_label
from ichseg.data.layouts import CODES, LabelMapping, label_folder_mapping
from ichseg.errors import UsageError
from ichseg.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    DEFINITIONS,
    METRIC_NAMES,
    case_metrics,
)
from ichseg.fileio import atomic_open, atomic_write_text

# Label codes 1..5 of the contract (BHSD's order): EDH, IPH, IVH, SAH, SDH.
SUBTYPE_NAMES = tuple(name for code, name in sorted(CODES.items()) if code > 0)
ANY = "any"
# Largest affine difference (mm, or direction cosine x mm) still taken as the same grid: far
# below any voxel size, above float32 round-off of a rewritten header.
_AFFINE_TOLERANCE = 0.01


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UsageError(f"{role} folder {folder} does not exist or is not a folder")
    files = {nifti_stem(p.name): p for p in nifti_files(folder)}
    if not files:
        raise UsageError(f"{role} folder {folder} holds no NIfTI label maps (.nii or .nii.gz)")
    return files


def _pairs(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    preds, gts = _label_files(pred_dir, "prediction"), _label_files(gt_dir, "ground-truth")
    for case, gt in gts.items():
        if case not in preds:
            raise UsageError(f"ground truth {gt} has no prediction {case}.nii.gz in {pred_dir}")
    for case, pred in preds.items():
        if case not in gts:
            raise UsageError(f"prediction {pred} has no ground truth {case}.nii[.gz] in {gt_dir}")
    return [(case, preds[case], gts[case]) for case in sorted(gts)]


def _read_pair(pred_path: Path, gt_path: Path, mapping: LabelMapping) -> tuple[Volume, Volume]:
    """Both label maps, the ground truth in contract codes through `mapping`; refused (naming the
    file) unless they lie on the same grid and the ground truth holds only allowed values."""
    pred, gt = read_label(pred_path), read_label(gt_path)
    invalid = mapping.invalid_values(np.flatnonzero(np.bincount(gt.array.ravel())))
    if invalid:
        raise UsageError(f"ground truth {gt_path} holds values {invalid[:5]} outside "
                         f"{mapping.description}")
    gt = Volume(mapping.to_codes(gt.array), gt.affine, gt.path, gt.header)
    if pred.array.shape != gt.array.shape:
        raise UsageError(f"prediction {pred_path} has shape {pred.array.shape} but its ground "
                         f"truth {gt_path} has {gt.array.shape}")
    if not np.allclose(pred.affine, gt.affine, rtol=0.0, atol=_AFFINE_TOLERANCE):
        raise UsageError(f"prediction {pred_path} lies on another grid (affine) than its "
                         f"ground truth {gt_path}")
    return pred, gt


def _subtype_metrics(pred: Volume, gt: Volume, tolerance: float) -> dict[str, dict[str, float]]:
    return {name: case_metrics(pred.array == code, gt.array == code, gt.spacing,
                               gt.voxel_volume_mm3, tolerance)
            for code, name in enumerate(SUBTYPE_NAMES, start=1)}


def _predicted_subtypes(pred_dir: Path) -> bool:
    """Whether `ichseg predict` wrote these predictions with a subtype model: its volumes.csv
    then has one column per subtype (a case may hold only code 1, EDH)."""
    volumes = pred_dir / "volumes.csv"
    if not volumes.is_file():
        return False
    with volumes.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    return f"{SUBTYPE_NAMES[-1]}_ml" in header


def mean_and_median(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"mean": ..., "median": ...} of each metric over the rows, undefined (NaN) values left out."""
    mean, median = {}, {}
    for name in METRIC_NAMES:
        values = np.array([r[name] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        mean[name] = float(values.mean()) if values.size else math.nan
        median[name] = float(np.median(values)) if values.size else math.nan
    return {"mean": mean, "median": median}


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path,
                     out_dir: str | Path | None = None,
                     nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, Any]:
    """Score every prediction in `pred_dir` against the same case in `gt_dir`.

    Returns {"pred_dir", "gt_dir", "gt_labels", "nsd_tolerance_mm", "definitions", "cases":
    [per-case metrics, with "classes" when subtyped], "mean", "median", "classes": {subtype:
    {"cases", "mean", "median"}}, "files"}; with `out_dir`, also writes metrics.csv, metrics.json
    and metrics.png there. Undefined values (a relative volume difference against an empty
    ground truth) are None, so the report is valid JSON. `nsd_tolerance_mm` is `nsd`'s tolerance
    (default INSTANCE 2022's 0.42 mm).
    """
    tolerance = float(nsd_tolerance_mm)
    if not tolerance > 0:
        raise UsageError(f"--nsd-tolerance must be above 0 mm, got {nsd_tolerance_mm}")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = _pairs(pred_dir, gt_dir)
    layout, mapping = label_folder_mapping(gt_dir)
    rows: list[dict[str, Any]] = []
    pred_max = gt_max = 0
    for case, pred_path, gt_path in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        pred, gt = _read_pair(pred_path, gt_path, mapping)
        rows.append({"case": case, **case_metrics(pred.array > 0, gt.array > 0, gt.spacing,
                                                  gt.voxel_volume_mm3, tolerance)})
        pred_max, gt_max = max(pred_max, int(pred.array.max())), max(gt_max, int(gt.array.max()))

    report: dict[str, Any] = {
        "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "gt_labels": mapping.description,
        "nsd_tolerance_mm": tolerance,
        "definitions": {**DEFINITIONS, "nsd": DEFINITIONS["nsd"].replace(
            "the tolerance named in nsd_tolerance_mm", f"{tolerance:g} mm")},
        "cases": rows, **mean_and_median(rows), "classes": {}, "note": None}
    # A subtype dataset's labels (BHSD, a named nnU-Net set) are subtypes even where every case
    # holds only EDH (code 1); a plain or generic folder has subtypes when it shows a code > 1.
    gt_subtyped = not mapping.binary and (gt_max > 1 or layout not in (None, "generic"))
    pred_subtyped = pred_max > 1 or _predicted_subtypes(pred_dir)
    if gt_subtyped and pred_subtyped:
        for row, (_, pred_path, gt_path) in zip(
                rows, tqdm(pairs, desc="evaluate subtypes", unit="case", disable=None),
                strict=True):
            row["classes"] = _subtype_metrics(*_read_pair(pred_path, gt_path, mapping), tolerance)
        for name in SUBTYPE_NAMES:
            present = [r["classes"][name] for r in rows
                       if r["classes"][name]["gt_ml"] > 0 or r["classes"][name]["pred_ml"] > 0]
            report["classes"][name] = {"cases": len(present), **mean_and_median(present)}
    elif gt_subtyped or pred_subtyped:
        # A binary model against subtype labels (or the reverse): code 1 means different things
        # on the two sides, so only "any hemorrhage" is comparable.
        side = "ground truth carries" if gt_subtyped else "predictions carry"
        report["note"] = (f"only the {side} subtype codes: scored as any hemorrhage, "
                          f"without per-subtype rows")
    if out_dir is not None:
        report["files"] = _write_outputs(report, Path(out_dir))
    return json_safe(report)


def _write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": out_dir / "metrics.csv", "json": out_dir / "metrics.json",
             "png": out_dir / "metrics.png"}
    with atomic_open(files["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "class", *METRIC_NAMES])
        for r in report["cases"]:
            writer.writerow([r["case"], ANY, *(r[k] for k in METRIC_NAMES)])
            for name, values in r.get("classes", {}).items():
                writer.writerow([r["case"], name, *(values[k] for k in METRIC_NAMES)])
    report = {**report, "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(files["json"], json.dumps(json_safe(report), indent=2) + "\n")
    draw_boxplots(report, files["png"])
    return {k: str(v) for k, v in files.items()}


def json_safe(value: Any) -> Any:
    """NaN is not JSON: undefined values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def draw_boxplots(report: dict[str, Any], path: Path) -> None:
    """Box plots of the report's per-case metrics (overlap, boundary distance, volume error)."""
    from ichseg.viz.figure import new_figure, save_figure

    rows = report["cases"]
    panels = (("overlap (higher is better)", ("dice", "nsd", "nsd_1", "lesion_f1"), (0, 1.02)),
              ("boundary distance, mm", ("hd95", "hd_max"), None),
              ("volume error, mL (pred - gt)", ("volume_error_ml",), None))
    fig = new_figure(12, 4.2)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.1, top=0.85, wspace=0.2)
    for i, (title, names, limits) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        data = [[r[n] for r in rows if not math.isnan(r[n])] for n in names]
        ax.boxplot(data, showmeans=True, showfliers=False)  # every case is scattered on top
        ax.set_xticks(range(1, len(names) + 1), [n.replace("_", " ") for n in names])
        for x, values in enumerate(data, start=1):
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(np.add(x, jitter), values, s=10, alpha=0.6, color="tab:blue", zorder=3)
        if limits:
            ax.set_ylim(*limits)
        if names == ("volume_error_ml",):
            ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(rows)} cases: mean Dice {report['mean']['dice']:.3f}, "
                 f"median HD95 {report['median']['hd95']:.1f} mm")
    save_figure(fig, path)


def format_summary(report: dict[str, Any]) -> str:
    """The report as a console table: per case, then mean and median, then per subtype."""
    shown = ("dice", "hd95", "hd_max", "nsd", "rvd", "abs_rvd", "volume_error_ml", "lesion_f1",
             "gt_ml", "pred_ml")
    header = f"{'case':<20}" + "".join(f"{n.replace('volume_error_ml', 'vol_err_ml'):>11}"
                                       for n in shown)

    def line(label: str, values: dict[str, float | None]) -> str:
        return f"{label:<20}" + "".join(f"{'n/a':>11}" if values[n] is None else
                                        f"{values[n]:>11.3f}" for n in shown)

    lines = [f"{len(report['cases'])} cases: {report['pred_dir']} against {report['gt_dir']}",
             header]
    lines += [line(r["case"][:20], r) for r in report["cases"]]
    lines += ["-" * len(header), line("mean", report["mean"]), line("median", report["median"])]
    for name, summary in report["classes"].items():
        if summary["cases"]:
            lines.append(line(f"{name} mean (n={summary['cases']})", summary["mean"]))
    tolerance = report["nsd_tolerance_mm"]
    lines.append(f"Dice, NSD and lesion F1 in [0, 1]; HD in mm; volumes in mL. Ground truth: "
                 f"{report['gt_labels']}.")
    lines.append(f"NSD at {tolerance:g} mm and HD95/max HD from area-weighted surface elements "
                 f"(DeepMind surface-distance, as INSTANCE 2022); rvd = (pred - gt) / gt, "
                 f"abs_rvd = |rvd| (INSTANCE 2022's). Definitions: metrics.json \"definitions\".")
    if report.get("note"):
        lines.append(f"Note: {report['note']}.")
    for kind, path in report.get("files", {}).items():
        lines.append(f"{kind}: {path}")
    return "\n".join(lines)
