"""`ichseg evaluate`: predicted label maps against ground truth, case by case, with a summary.

Pairs are matched by case id (the file name without `.nii` / `.nii.gz`). Every case is scored for
"any hemorrhage" (label > 0); when both folders carry subtype codes (some code above 1 in the
predictions and in the ground truth) each subtype is scored too. A binary model's code 1 is "any
hemorrhage", not EDH, so against subtype labels it is scored as any hemorrhage only. Summaries are the mean and median over cases, skipping
undefined values (a relative volume difference against an empty ground truth). Per-subtype
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
from ichseg.data.layouts import CODES
from ichseg.errors import UsageError
from ichseg.evaluation.metrics import METRIC_NAMES, case_metrics
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


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[Volume, Volume]:
    """Both label maps, refused (naming the prediction) unless they lie on the same grid."""
    pred, gt = read_label(pred_path), read_label(gt_path)
    if pred.array.shape != gt.array.shape:
        raise UsageError(f"prediction {pred_path} has shape {pred.array.shape} but its ground "
                         f"truth {gt_path} has {gt.array.shape}")
    if not np.allclose(pred.affine, gt.affine, rtol=0.0, atol=_AFFINE_TOLERANCE):
        raise UsageError(f"prediction {pred_path} lies on another grid (affine) than its "
                         f"ground truth {gt_path}")
    return pred, gt


def _subtype_metrics(pred: Volume, gt: Volume) -> dict[str, dict[str, float]]:
    return {name: case_metrics(pred.array == code, gt.array == code, gt.spacing,
                               gt.voxel_volume_mm3)
            for code, name in enumerate(SUBTYPE_NAMES, start=1)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    mean, median = {}, {}
    for name in METRIC_NAMES:
        values = np.array([r[name] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        mean[name] = float(values.mean()) if values.size else math.nan
        median[name] = float(np.median(values)) if values.size else math.nan
    return {"mean": mean, "median": median}


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path,
                     out_dir: str | Path | None = None) -> dict[str, Any]:
    """Score every prediction in `pred_dir` against the same case in `gt_dir`.

    Returns {"pred_dir", "gt_dir", "cases": [per-case metrics, with "classes" when subtyped],
    "mean", "median", "classes": {subtype: {"cases", "mean", "median"}}, "files"}; with `out_dir`,
    also writes metrics.csv, metrics.json and metrics.png there. Undefined values (a relative
    volume difference against an empty ground truth) are None, so the report is valid JSON.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = _pairs(pred_dir, gt_dir)
    rows: list[dict[str, Any]] = []
    pred_max = gt_max = 0
    for case, pred_path, gt_path in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        pred, gt = _read_pair(pred_path, gt_path)
        rows.append({"case": case, **case_metrics(pred.array > 0, gt.array > 0, gt.spacing,
                                                  gt.voxel_volume_mm3)})
        pred_max, gt_max = max(pred_max, int(pred.array.max())), max(gt_max, int(gt.array.max()))

    report: dict[str, Any] = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "cases": rows,
                              **_summary(rows), "classes": {}, "note": None}
    if pred_max > 1 and gt_max > 1:
        for row, (_, pred_path, gt_path) in zip(
                rows, tqdm(pairs, desc="evaluate subtypes", unit="case", disable=None),
                strict=True):
            row["classes"] = _subtype_metrics(*_read_pair(pred_path, gt_path))
        for name in SUBTYPE_NAMES:
            present = [r["classes"][name] for r in rows
                       if r["classes"][name]["gt_ml"] > 0 or r["classes"][name]["pred_ml"] > 0]
            report["classes"][name] = {"cases": len(present), **_summary(present)}
    elif max(pred_max, gt_max) > 1:
        # A binary model against subtype labels (or the reverse): code 1 means different things
        # on the two sides, so only "any hemorrhage" is comparable.
        side = "ground truth carries" if gt_max > 1 else "predictions carry"
        report["note"] = (f"only the {side} subtype codes: scored as any hemorrhage, "
                          f"without per-subtype rows")
    if out_dir is not None:
        report["files"] = _write_outputs(report, Path(out_dir))
    return _json_safe(report)


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
    atomic_write_text(files["json"], json.dumps(_json_safe(report), indent=2) + "\n")
    _draw_boxplots(report, files["png"])
    return {k: str(v) for k, v in files.items()}


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: undefined values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _draw_boxplots(report: dict[str, Any], path: Path) -> None:
    from ichseg.viz.figure import new_figure, save_figure

    rows = report["cases"]
    panels = (("overlap (higher is better)", ("dice", "nsd", "nsd_0.42", "lesion_f1"), (0, 1.02)),
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
    shown = ("dice", "hd95", "hd_max", "nsd", "rvd", "volume_error_ml", "lesion_f1", "gt_ml",
             "pred_ml")
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
    lines.append("Dice, NSD (1 mm) and lesion F1 in [0, 1]; HD in mm; volumes in mL.")
    if report.get("note"):
        lines.append(f"Note: {report['note']}.")
    for kind, path in report.get("files", {}).items():
        lines.append(f"{kind}: {path}")
    return "\n".join(lines)
