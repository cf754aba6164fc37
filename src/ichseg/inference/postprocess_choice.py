"""Choosing a run's postprocessing on its validation cases (nnU-Net's way): each case is
segmented whole by the run's best model as predict segments it (`predict.segment`: the run's
TTA, and what lies outside the cranial cavity dropped when `inference.intracranial_only`),
every candidate of `postprocess.CANDIDATES` is scored, and the choice goes to
RUN/postprocessing.json. The fold runs of a cross-validation choose
together, on all their validation cases: five validation cases are too few to tell a speck from
a small bleed. Apart from `postprocess` because it runs the predictor, which itself applies
the choice."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ichseg.errors import UsageError
from ichseg.evaluation.metrics import dice, lesion_f1, surface_metrics
from ichseg.fileio import atomic_write_text
from ichseg.inference.postprocess import CANDIDATES, POSTPROCESSING_FILE, mean_scores, pick
from ichseg.inference.predict import segment
from ichseg.inference.predictor import load_predictor

log = logging.getLogger("ichseg.postprocess")


def choose_postprocessing(run_dirs: str | Path | Sequence[str | Path],
                          quiet: bool = False) -> dict[str, Any]:
    """Choose the postprocessing on the validation cases of one run, or of several pooled (the
    fold runs of a cross-validation, as nnU-Net pools its folds: each case segmented by its own
    run's model), and write the one choice to every run's RUN/postprocessing.json.

    Reads each run's config (dataset, layout), split.json and best model; returns the record
    written (for several runs, the first run's). UsageError when a run has no validation case,
    its files cannot be read, or the runs would segment differently (their `inference.tta`).
    """
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if len(set(runs)) != len(runs):
        raise UsageError("a run is named twice: give each fold run once")
    scores: list[list[dict[str, float]]] = [[] for _ in CANDIDATES]
    scored = [_score_run(run_dir, scores, quiet) for run_dir in runs]
    ttas = {tta for _, tta, _ in scored}
    if len(ttas) > 1:
        raise UsageError("the runs segment differently (inference.tta on in some, off in "
                         "others): set the same inference.tta in each run's config.yaml")
    summaries = [mean_scores(s) for s in scores]
    chosen = CANDIDATES[pick(summaries)]
    pooled = len(runs) > 1
    common = {
        "chosen": {**asdict(chosen), "name": chosen.name},
        "rule": "highest mean Dice (then lesion F1, then lowest max HD) among the candidates "
                "whose mean Dice and lesion F1 are at least, and mean max HD at most, those of "
                "no postprocessing",
        "tta": ttas.pop(),
        **({"runs": [str(r.resolve()) for r in runs]} if pooled else {}),
        "candidates": [{**asdict(c), "name": c.name, **s}
                       for c, s in zip(CANDIDATES, summaries, strict=True)],
    }
    records = []
    for run_dir, (checkpoint, _, validation) in zip(runs, scored, strict=True):
        record = {**common, "checkpoint": checkpoint, "validation_cases": validation}
        if pooled:
            record["pooled_validation_cases"] = {str(r): v for r, (_, _, v) in
                                                 zip(runs, scored, strict=True)}
        atomic_write_text(run_dir / POSTPROCESSING_FILE, json.dumps(record, indent=2) + "\n")
        records.append(record)
    base = summaries[0]
    mine = summaries[CANDIDATES.index(chosen)]
    log.info("postprocessing chosen on %d validation case(s)%s: %s (Dice %.4f -> %.4f, lesion F1 "
             "%.4f -> %.4f, max HD %.1f -> %.1f mm); recorded in %s", len(scores[0]),
             f" of {len(runs)} runs" if pooled else "", chosen.name, base["dice"], mine["dice"],
             base["lesion_f1"], mine["lesion_f1"], base["hd_max"], mine["hd_max"],
             ", ".join(str(r / POSTPROCESSING_FILE) for r in runs))
    return records[0]


def _score_run(run_dir: Path, scores: list[list[dict[str, float]]],
               quiet: bool) -> tuple[str, bool, list[str]]:
    """Append every candidate's scores on the run's validation cases to `scores`; return (the
    checkpoint that segmented them, whether with TTA, the case ids)."""
    from ichseg.config import read_run_config
    from ichseg.data.ct import label_codes
    from ichseg.data.dicom import read_scan
    from ichseg.data.io import read_label
    from ichseg.data.layouts import find_cases

    cfg = read_run_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() \
        else None
    split_path = run_dir / "split.json"
    if cfg is None or not split_path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (config.yaml and split.json are needed)")
    try:
        validation = list(json.loads(split_path.read_text())["validation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"split file {split_path} cannot be read: {exc}") from None
    if not validation:
        raise UsageError(f"run {run_dir} has no validation cases to choose postprocessing on")
    index = find_cases(cfg.data.path, cfg.data.layout)
    cases = {case.case_id: case for case in index.cases}
    missing = [c for c in validation if c not in cases or cases[c].label is None]
    if missing:
        raise UsageError(f"validation cases {', '.join(missing[:5])} of {split_path} have no "
                         f"labelled scan in {cfg.data.path}")
    predictor = load_predictor(run_dir, "best", cfg.training.device)
    tta = predictor.cfg.inference.tta  # as predict will segment: see postprocess's docstring
    for case_id in tqdm(validation, desc=f"postprocessing {run_dir.name}", unit="case",
                        disable=quiet or None):
        case = cases[case_id]
        volume = read_scan(case.image)
        labels = segment(predictor, volume, tta).labels
        truth = label_codes(read_label(case.label), index.label_mapping, False) > 0
        for i, candidate in enumerate(CANDIDATES):
            kept = candidate.apply(labels, volume.voxel_volume_mm3) > 0
            scores[i].append({"dice": dice(kept, truth), "lesion_f1": lesion_f1(kept, truth),
                              "hd_max": surface_metrics(kept, truth, volume.spacing)["hd_max"]})
    return str(predictor.source), tta, validation
