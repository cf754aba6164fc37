"""Postprocessing chosen on the validation cases: the candidates, the rule, the run's record, and
predict applying it (the network's output replaced by the truth plus a far speck)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_predict import _checkpoint, one_thread  # noqa: F401 (autouse)

from ichseg.cli import main
from ichseg.config import preset_config
from ichseg.data.io import read_label
from ichseg.inference import postprocess_choice, predict
from ichseg.inference.postprocess import (
    CANDIDATES,
    NONE,
    POSTPROCESSING_FILE,
    Postprocessing,
    pick,
    read_postprocessing,
)

VOXEL_MM3 = 80.0  # 4 x 4 x 5 mm: one voxel is 0.08 mL


def test_candidates_remove_small_components_by_volume_or_keep_the_largest():
    labels = np.zeros((20, 20, 6), np.uint8)
    labels[2:5, 2:5, 1:3] = 2      # 18 voxels, 1.44 mL
    labels[2:5, 5:6, 1:3] = 4      # touching it: the same lesion, 0.48 mL more
    labels[10:12, 10:12, 4] = 1    # 4 voxels, 0.32 mL
    labels[18, 18, 0] = 5          # one voxel, 0.08 mL
    kept = Postprocessing(min_lesion_ml=0.1).apply(labels, VOXEL_MM3)
    assert kept[18, 18, 0] == 0 and kept[10, 10, 4] == 1
    assert np.array_equal(kept[:10, :10], labels[:10, :10])  # codes of kept lesions unchanged
    assert not Postprocessing(min_lesion_ml=0.5).apply(labels, VOXEL_MM3)[10:12, 10:12].any()
    largest = Postprocessing(keep_largest=True).apply(labels, VOXEL_MM3)
    assert np.array_equal(largest > 0, np.isin(np.arange(6), [2, 4])[labels])
    assert NONE.apply(labels, VOXEL_MM3) is labels
    assert labels[18, 18, 0] == 5  # the input is never changed in place
    assert [c.name for c in CANDIDATES][:2] == ["none", "remove lesions below 0.1 mL"]


def test_the_rule_keeps_dice_lesion_f1_and_max_hd_from_getting_worse():
    scores = [{"dice": 0.80, "lesion_f1": 0.50, "hd_max": 20.0},   # none
              {"dice": 0.81, "lesion_f1": 0.70, "hd_max": 15.0},   # better on all three
              {"dice": 0.81, "lesion_f1": 0.70, "hd_max": 15.0},   # a tie: the first listed wins
              {"dice": 0.85, "lesion_f1": 0.40, "hd_max": 10.0},   # better Dice, loses lesions
              {"dice": 0.82, "lesion_f1": 0.80, "hd_max": 25.0}]   # a real fragment removed
    assert pick(scores) == 1
    assert pick([scores[0], scores[3]]) == 0
    assert pick([scores[0], scores[4]]) == 0
    assert pick([scores[0], {"dice": 0.79, "lesion_f1": 0.9, "hd_max": 5.0}]) == 0
    assert pick([scores[0], {"dice": 0.81, "lesion_f1": 0.70, "hd_max": 16.0}, scores[1]]) == 2


@pytest.fixture
def run_with_specks(tmp_path, write_small_case, monkeypatch) -> Path:
    """A run folder on two validation cases whose "network" returns the truth plus a speck."""
    data = tmp_path / "data"
    affine = np.diag([4.0, 4.0, 5.0, 1.0])
    for case in ("a", "b"):
        write_small_case(data / "images" / f"{case}.nii.gz", data / "labels" / f"{case}.nii.gz",
                         label_value=2, affine=affine)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _checkpoint(run / "checkpoints" / "best.pt", 5.0, -5.0)
    cfg = preset_config("tiny")
    cfg.data.path = str(data)
    cfg.save(run / "config.yaml")
    (run / "split.json").write_text(json.dumps({"train": [], "validation": ["a", "b"]}))

    def truth_and_speck(predictor, volume, *args, **kwargs):
        labels = read_label(Path(str(volume.path).replace("images", "labels"))).array.copy()
        labels[14, 14, 0] = 2  # 0.08 mL, far from the lesion
        return predict.Segmentation(labels, None)

    # Both users of `segment`: predict's own, and the name the choice imported from it.
    monkeypatch.setattr(predict, "segment", truth_and_speck)
    monkeypatch.setattr(postprocess_choice, "segment", truth_and_speck)
    return run


def test_postprocess_command_records_the_choice_and_predict_applies_it(run_with_specks, capsys):
    run = run_with_specks
    assert main(["postprocess", str(run)]) == 0
    assert "remove lesions below 0.1 mL" in capsys.readouterr().out
    record = json.loads((run / POSTPROCESSING_FILE).read_text())
    assert record["chosen"]["name"] == "remove lesions below 0.1 mL"
    assert record["validation_cases"] == ["a", "b"]
    scores = {c["name"]: c for c in record["candidates"]}
    assert scores["none"]["lesion_f1"] == pytest.approx(2 / 3)
    assert scores["remove lesions below 0.1 mL"]["lesion_f1"] == 1.0
    assert scores["remove lesions below 2 mL"]["dice"] == 0.0  # the 1.44 mL bleed removed too
    assert read_postprocessing(run)[0] == Postprocessing(min_lesion_ml=0.1)

    scan = run.parent / "data" / "images" / "a.nii.gz"
    (row,) = predict.predict_cases(run, [scan], run.parent / "pred", quiet=True)
    assert row["postprocessing"] == "remove lesions below 0.1 mL"
    assert read_label(run.parent / "pred" / "a.nii.gz").array[14, 14, 0] == 0
    with (run.parent / "pred" / "volumes.csv").open() as handle:
        assert next(csv.DictReader(handle))["postprocessing"] == "remove lesions below 0.1 mL"
    (raw,) = predict.predict_cases(run, [scan], run.parent / "raw", quiet=True, postprocess=False)
    assert raw["postprocessing"] == "none"
    assert read_label(run.parent / "raw" / "a.nii.gz").array[14, 14, 0] == 2

    # Chosen on single-pass predictions (the tiny preset's inference.tta is off): predict with
    # TTA applies the choice and says it was made otherwise.
    assert record["tta"] is False and read_postprocessing(run)[2] is False
    capsys.readouterr()
    predict.predict_cases(run, [scan], run.parent / "tta", tta=True)
    assert "chosen on predictions without TTA, these are with it" in capsys.readouterr().out


def test_fold_runs_choose_together_and_their_ensemble_applies_the_choice(run_with_specks,
                                                                         capsys):
    first = run_with_specks
    second = first.parent / "fold1"
    shutil.copytree(first, second)
    (first / "split.json").write_text(json.dumps({"train": ["b"], "validation": ["a"]}))
    (second / "split.json").write_text(json.dumps({"train": ["a"], "validation": ["b"]}))
    scan = first.parent / "data" / "images" / "a.nii.gz"

    # Chosen apart, each fold alone: an ensemble of the two applies neither.
    assert main(["postprocess", str(first)]) == 0
    assert main(["postprocess", str(second)]) == 0
    (row,) = predict.predict_cases([first, second], [scan], first.parent / "apart", quiet=True)
    assert row["postprocessing"] == "none"

    capsys.readouterr()
    assert main(["postprocess", str(first), str(second)]) == 0
    assert "on 2 validation case(s) of 2 runs" in capsys.readouterr().out
    records = [json.loads((r / POSTPROCESSING_FILE).read_text()) for r in (first, second)]
    assert records[0]["runs"] == records[1]["runs"] == [str(first), str(second)]
    assert [r["validation_cases"] for r in records] == [["a"], ["b"]]
    assert records[0]["candidates"] == records[1]["candidates"]
    assert records[0]["chosen"]["name"] == "remove lesions below 0.1 mL"
    # The pooled means are those of both cases: the single-run choice on ["a", "b"] gave them.
    scores = {c["name"]: c for c in records[0]["candidates"]}
    assert scores["none"]["lesion_f1"] == pytest.approx(2 / 3)
    assert scores["remove lesions below 2 mL"]["dice"] == 0.0

    capsys.readouterr()
    (row,) = predict.predict_cases([first, second], [scan], first.parent / "together")
    assert row["postprocessing"] == "remove lesions below 0.1 mL"
    assert "chosen on the pooled validation cases of 2 runs" in capsys.readouterr().out
    assert read_label(first.parent / "together" / "a.nii.gz").array[14, 14, 0] == 0

    assert main(["postprocess", str(first), str(first)]) == 2
    assert "named twice" in capsys.readouterr().err


def test_a_run_without_validation_cases_exits_2(run_with_specks, capsys):
    (run_with_specks / "split.json").write_text(json.dumps({"train": ["a"], "validation": []}))
    assert main(["postprocess", str(run_with_specks)]) == 2
    assert "no validation cases" in capsys.readouterr().err
    assert not (run_with_specks / POSTPROCESSING_FILE).exists()
