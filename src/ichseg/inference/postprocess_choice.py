"""Choosing a run's postprocessing on its validation cases (nnU-Net's way): each case is
segmented whole by the run's best model, every candidate of `postprocess.CANDIDATES` is scored,
and the choice goes to RUN/postprocessing.json. Apart from `postprocess` because it runs the
predictor, which itself applies the choice."""

from __future__ import annotations

import json
import logging
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


def choose_postprocessing(run_dir: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Choose the run's postprocessing on its validation cases and write RUN/postprocessing.json.

    Reads the run's config (dataset, layout), split.json and best model; returns the record
    written. UsageError when the run has no validation case or its files cannot be read.
    """
    from ichseg.config import read_run_config
    from ichseg.data.ct import label_codes
    from ichseg.data.dicom import read_scan
    from ichseg.data.io import read_label
    from ichseg.data.layouts import find_cases

    run_dir = Path(run_dir)
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
    scores: list[list[dict[str, float]]] = [[] for _ in CANDIDATES]
    for case_id in tqdm(validation, desc="postprocessing", unit="case", disable=quiet or None):
        case = cases[case_id]
        volume = read_scan(case.image)
        labels, _ = segment(predictor, volume, tta)
        truth = label_codes(read_label(case.label), index.label_mapping, False) > 0
        for i, candidate in enumerate(CANDIDATES):
            kept = candidate.apply(labels, volume.voxel_volume_mm3) > 0
            scores[i].append({"dice": dice(kept, truth), "lesion_f1": lesion_f1(kept, truth),
                              "hd_max": surface_metrics(kept, truth, volume.spacing)["hd_max"]})
    summaries = [mean_scores(s) for s in scores]
    chosen = CANDIDATES[pick(summaries)]
    record = {
        "chosen": {**asdict(chosen), "name": chosen.name},
        "rule": "highest mean Dice (then lesion F1, then lowest max HD) among the candidates "
                "whose mean Dice and lesion F1 are at least, and mean max HD at most, those of "
                "no postprocessing",
        "tta": tta,
        "checkpoint": str(predictor.source),
        "validation_cases": validation,
        "candidates": [{**asdict(c), "name": c.name, **s}
                       for c, s in zip(CANDIDATES, summaries, strict=True)],
    }
    atomic_write_text(run_dir / POSTPROCESSING_FILE, json.dumps(record, indent=2) + "\n")
    base = summaries[0]
    mine = summaries[CANDIDATES.index(chosen)]
    log.info("postprocessing chosen on %d validation case(s): %s (Dice %.4f -> %.4f, lesion F1 "
             "%.4f -> %.4f, max HD %.1f -> %.1f mm); recorded in %s", len(validation),
             chosen.name, base["dice"], mine["dice"], base["lesion_f1"], mine["lesion_f1"],
             base["hd_max"], mine["hd_max"], run_dir / POSTPROCESSING_FILE)
    return record
