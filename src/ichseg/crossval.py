"""`ichseg crossval RUN...`: the cross-validation table of trained folds, as nnU-Net reports it.

Each run's model predicts its own validation cases (split.json), whole volumes through `predict`,
and `evaluate` scores them against the dataset's labels (in the contract's codes). Per fold, in
`OUT/fold_K/`: `predictions/` (label maps, overlays, volumes.csv, models.json), `ground_truth/`
and evaluate's metrics.csv / metrics.json / metrics.png. Across folds, in `OUT/`: every case with
its fold in `crossval.csv`, the pooled summary (mean and median over all validation cases, and
the mean and spread of the fold means) in `crossval.json`, and the box plot in `crossval.png`.

A case validated by two of the runs is refused: the folds of one cross-validation are disjoint.
Runs that are not folds (no `--fold`) are accepted and reported as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.errors import UsageError
from ichseg.fileio import atomic_write_text

CSV_NAME = "crossval.csv"
JSON_NAME = "crossval.json"
PNG_NAME = "crossval.png"


def _fold_of(run: Path) -> tuple[Any, dict[str, Any]]:
    """(the run's config, its split.json) — what a run folder says about its fold."""
    from ichseg.config import read_run_config

    config, split_file = run / "config.yaml", run / "split.json"
    for path in (config, split_file):
        if not path.is_file():
            raise UsageError(f"{run} is not a trained run folder: {path.name} is missing")
    try:
        split = json.loads(split_file.read_text())
        split["validation"] = list(split["validation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"split file {split_file} cannot be read: {exc}") from None
    if not split["validation"]:
        raise UsageError(f"run {run} has no validation cases to cross-validate ({split_file})")
    return read_run_config(config), split


def _label(run: Path, split: dict[str, Any]) -> str:
    fold = split.get("fold")
    return f"fold_{fold}" if fold is not None else run.name


def _write_ground_truth(cases: dict[str, Any], mapping: Any, predicted: list[dict[str, Any]],
                        folder: Path) -> None:
    """Each predicted case's label, in the contract's codes, under the prediction's own name."""
    from ichseg.data.io import read_label, write_nifti

    by_image = {str(case.image): case for case in cases.values()}
    folder.mkdir(parents=True, exist_ok=True)
    for row in predicted:
        case = by_image[row["input"]]
        label = read_label(case.label)
        write_nifti(folder / f"{row['case']}.nii.gz", mapping.to_codes(label.array), label.affine,
                    like=label)


def cross_validate(runs: Sequence[str | Path], out_dir: str | Path, tta: bool = False,
                   checkpoint: str = "best", device: str = "auto",
                   quiet: bool = False) -> dict[str, Any]:
    """Predict and score every fold's validation cases; write and return the table."""
    from ichseg.data.layouts import find_cases
    from ichseg.evaluation.evaluate import evaluate_folders
    from ichseg.inference.ensemble import expand_runs
    from ichseg.inference.predict import predict_cases

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder")
    paths = expand_runs(runs)
    # Everything is read and checked before the first prediction.
    folds = []
    validated_by: dict[str, Path] = {}
    for run in paths:
        cfg, split = _fold_of(run)
        for case in split["validation"]:
            if case in validated_by:
                raise UsageError(f"case {case} is validated by both {validated_by[case]} and "
                                 f"{run}: the runs are not folds of one cross-validation")
            validated_by[case] = run
        index = find_cases(cfg.data.path, cfg.data.layout)
        cases = {c.case_id: c for c in index.cases if c.label is not None}
        missing = [c for c in split["validation"] if c not in cases]
        if missing:
            raise UsageError(f"validation case {missing[0]} of {run} has no labelled scan in "
                             f"{cfg.data.path}")
        folds.append((run, cfg, split, index, cases))
    labels = [_label(run, split) for run, _, split, _, _ in folds]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two of the runs are the same fold ({', '.join(labels)})")

    per_fold: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for label, (run, _cfg, split, index, cases) in zip(labels, folds, strict=True):
        folder = out_dir / label
        validation = [cases[c] for c in split["validation"]]
        predicted = predict_cases(run, [c.image for c in validation], folder / "predictions",
                                  tta=tta, checkpoint=checkpoint, device=device, quiet=quiet)
        _write_ground_truth(cases, index.label_mapping, predicted, folder / "ground_truth")
        report = evaluate_folders(folder / "predictions", folder / "ground_truth", folder)
        per_fold[label] = {"run": str(run), "fold": split.get("fold"),
                           "folds": split.get("folds"), "cases": len(report["cases"]),
                           "mean": report["mean"], "median": report["median"],
                           "classes": report["classes"], "files": report["files"]}
        rows += [{"fold": label, "run": str(run), **row} for row in report["cases"]]
    report = _pooled(rows, per_fold, tta, checkpoint)
    report["files"] = _write_table(report, out_dir)
    return report


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _pooled(rows: list[dict[str, Any]], per_fold: dict[str, Any], tta: bool,
            checkpoint: str) -> dict[str, Any]:
    """Mean and median over every validation case (nnU-Net's summary), and across the fold
    means their mean and standard deviation (what papers quote as mean ± sd over folds)."""
    from ichseg.evaluation.evaluate import json_safe, mean_and_median
    from ichseg.evaluation.metrics import METRIC_NAMES

    numeric = [{**row, **{n: _nan(row[n]) for n in METRIC_NAMES}} for row in rows]
    across: dict[str, dict[str, float]] = {"mean": {}, "sd": {}}
    for name in METRIC_NAMES:
        means = np.array([_nan(f["mean"][name]) for f in per_fold.values()])
        means = means[~np.isnan(means)]
        across["mean"][name] = float(means.mean()) if means.size else math.nan
        across["sd"][name] = float(means.std(ddof=1)) if means.size > 1 else math.nan
    folds_given = sorted({f["folds"] for f in per_fold.values() if f["folds"] is not None})
    numbers = sorted(f["fold"] for f in per_fold.values() if f["fold"] is not None)
    note = None
    if len(folds_given) == 1 and len(numbers) < folds_given[0]:
        note = (f"{len(numbers)} of {folds_given[0]} folds given (folds "
                f"{', '.join(map(str, numbers))}): the table covers only their cases")
    return json_safe({"cases": numeric, **mean_and_median(numeric), "folds": per_fold,
                       "across_folds": across, "tta": tta, "checkpoint": checkpoint,
                       "note": note})


def _write_table(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    from ichseg.evaluation.evaluate import ANY, draw_boxplots
    from ichseg.evaluation.metrics import METRIC_NAMES

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": out_dir / CSV_NAME, "json": out_dir / JSON_NAME, "png": out_dir / PNG_NAME}
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["fold", "case", "class", *METRIC_NAMES])
    for r in report["cases"]:
        writer.writerow([r["fold"], r["case"], ANY, *(r[k] for k in METRIC_NAMES)])
        for name, values in r.get("classes", {}).items():
            writer.writerow([r["fold"], r["case"], name, *(values[k] for k in METRIC_NAMES)])
    atomic_write_text(files["csv"], table.getvalue())
    written = {k: str(v) for k, v in files.items()}
    atomic_write_text(files["json"], json.dumps({**report, "files": written}, indent=2) + "\n")
    drawable = {**report, "cases": [{**r, **{n: _nan(r[n]) for n in METRIC_NAMES}}
                                    for r in report["cases"]],
                "mean": {n: _nan(v) for n, v in report["mean"].items()},
                "median": {n: _nan(v) for n, v in report["median"].items()}}
    draw_boxplots(drawable, files["png"])
    return written


def format_crossval(report: dict[str, Any]) -> str:
    """The table for the console: one line per fold, then the pooled and across-fold rows."""
    shown = ("dice", "hd95", "nsd", "rvd", "volume_error_ml", "lesion_f1")
    header = f"{'':<24}{'cases':>6}" + "".join(f"{n.replace('volume_error_ml', 'vol_err_ml'):>11}"
                                             for n in shown)

    def line(label: str, count: Any, values: dict[str, Any]) -> str:
        return f"{label:<24}{count!s:>6}" + "".join(
            f"{'n/a':>11}" if values.get(n) is None else f"{values[n]:>11.3f}" for n in shown)

    lines = [header]
    lines += [line(f"{name} mean", fold["cases"], fold["mean"])
              for name, fold in report["folds"].items()]
    lines.append("-" * len(header))
    lines.append(line("all cases mean", len(report["cases"]), report["mean"]))
    lines.append(line("all cases median", len(report["cases"]), report["median"]))
    lines.append(line("fold means: mean", len(report["folds"]), report["across_folds"]["mean"]))
    lines.append(line("fold means: sd", len(report["folds"]), report["across_folds"]["sd"]))
    if report.get("note"):
        lines.append(f"Note: {report['note']}.")
    for kind, path in report.get("files", {}).items():
        lines.append(f"{kind}: {path}")
    return "\n".join(lines)
