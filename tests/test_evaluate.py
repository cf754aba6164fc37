"""`evaluate_folders` on small hand-made folders: pairing, conventions, summaries and files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from ichseg.cli import main
from ichseg.data.io import write_nifti
from ichseg.errors import UsageError
from ichseg.evaluation.evaluate import evaluate_folders, format_summary

SHAPE = (16, 16, 6)
SPACING = (0.5, 0.5, 5.0)
AFFINE = np.diag([*SPACING, 1.0])


def _write(folder, case, labels, affine=AFFINE):
    write_nifti(folder / f"{case}.nii.gz", labels.astype(np.uint8), affine)


def _blob(code=1):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 2:4] = code
    return labels


@pytest.fixture()
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    empty = np.zeros(SHAPE, dtype=np.uint8)
    _write(gt, "a_same", _blob())
    _write(pred, "a_same", _blob())
    _write(gt, "b_missed", _blob())
    _write(pred, "b_missed", empty)
    _write(gt, "c_empty", empty)
    _write(pred, "c_empty", empty)
    _write(gt, "d_false_alarm", empty)
    _write(pred, "d_false_alarm", _blob())
    return pred, gt


def test_scores_and_summaries(folders, tmp_path):
    pred, gt = folders
    report = evaluate_folders(pred, gt, tmp_path / "report")
    by_case = {r["case"]: r for r in report["cases"]}
    assert list(by_case) == ["a_same", "b_missed", "c_empty", "d_false_alarm"]
    assert by_case["a_same"]["dice"] == 1.0 and by_case["a_same"]["hd95"] == 0.0
    diagonal = math.sqrt(8.0**2 + 8.0**2 + 30.0**2)
    assert by_case["b_missed"]["dice"] == 0.0
    assert by_case["b_missed"]["hd_max"] == pytest.approx(diagonal)
    assert by_case["b_missed"]["gt_ml"] == pytest.approx(32 * 1.25 / 1000)
    assert by_case["b_missed"]["volume_error_ml"] == pytest.approx(-32 * 1.25 / 1000)
    assert by_case["c_empty"]["dice"] == 1.0 and by_case["c_empty"]["hd_max"] == 0.0
    assert by_case["d_false_alarm"]["hd95"] == pytest.approx(diagonal)
    assert by_case["d_false_alarm"]["rvd"] is None  # undefined against an empty ground truth
    assert report["mean"]["dice"] == pytest.approx(0.5)
    assert report["median"]["dice"] == pytest.approx(0.5)
    assert report["mean"]["hd_max"] == pytest.approx(diagonal / 2)
    assert report["mean"]["rvd"] == pytest.approx(-1 / 3)  # the three defined values
    assert report["classes"] == {}  # binary labels: no per-subtype scores
    json.dumps(report, allow_nan=False)  # what `ichseg evaluate --json` prints is valid JSON

    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for key in ("case", "dice", "hd95", "hd_max", "nsd", "rvd", "volume_error_ml", "lesion_f1",
                "gt_ml", "pred_ml", "nsd_1", "abs_rvd"):
        assert key in saved["cases"][0]
    with (tmp_path / "report" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["a_same", "b_missed", "c_empty", "d_false_alarm"]
    assert float(rows[1]["dice"]) == 0.0
    png = (tmp_path / "report" / "metrics.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = format_summary(report)
    assert "b_missed" in text and "mean" in text and "median" in text and "n/a" in text


def test_subtypes_scored_per_class(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    truth = _blob(2)
    truth[10:12, 10:12, 1:3] = 5
    guess = _blob(2)
    guess[10:12, 10:12, 1:3] = 4  # right place, wrong subtype
    _write(gt, "s1", truth)
    _write(pred, "s1", guess)
    _write(gt, "s2", _blob(1))  # codes 0/1 only in this pair
    _write(pred, "s2", _blob(1))
    report = evaluate_folders(pred, gt)
    s1 = report["cases"][0]
    assert s1["dice"] == 1.0  # any hemorrhage: perfect
    assert s1["classes"]["IPH"]["dice"] == 1.0
    assert s1["classes"]["SDH"]["dice"] == 0.0 and s1["classes"]["SAH"]["dice"] == 0.0
    assert s1["classes"]["EDH"]["dice"] == 1.0  # absent from both
    assert report["cases"][1]["classes"]["EDH"]["dice"] == 1.0
    # Subtype summaries count only the cases where the subtype occurs.
    assert report["classes"]["EDH"]["cases"] == 1
    assert report["classes"]["SDH"]["cases"] == 1 and report["classes"]["SDH"]["mean"]["dice"] == 0
    assert report["classes"]["IVH"]["cases"] == 0


def test_binary_predictions_against_subtype_labels_score_any_hemorrhage(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "s1", _blob(4))  # SAH
    _write(pred, "s1", _blob(1))  # a binary model's "hemorrhage", not EDH
    report = evaluate_folders(pred, gt)
    assert report["cases"][0]["dice"] == 1.0
    assert "classes" not in report["cases"][0] and report["classes"] == {}
    assert "ground truth" in report["note"]
    assert "Note: only the ground truth" in format_summary(report)


def test_missing_prediction_names_the_file_and_writes_nothing(folders, tmp_path):
    pred, gt = folders
    (pred / "b_missed.nii.gz").unlink()
    out = tmp_path / "report"
    code = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    assert code == 2
    assert not out.exists()
    with pytest.raises(UsageError, match="b_missed"):
        evaluate_folders(pred, gt, out)


def test_grid_mismatch_names_the_file(folders, tmp_path, capsys):
    pred, gt = folders
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    _write(pred, "c_empty", np.zeros(SHAPE, dtype=np.uint8), shifted)
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 2
    assert "c_empty.nii.gz" in capsys.readouterr().err
    assert not out.exists()
    _write(pred, "c_empty", np.zeros((16, 16, 5), dtype=np.uint8))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "shape" in capsys.readouterr().err


def test_report_names_its_definitions_and_nsd_tolerance(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--nsd-tolerance", "2"]) == 0
    printed = capsys.readouterr().out
    assert "NSD at 2 mm" in printed and "abs_rvd" in printed and "INSTANCE 2022" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["nsd_tolerance_mm"] == 2.0
    assert "2 mm" in saved["definitions"]["nsd"] and "area" in saved["definitions"]["nsd"]
    assert set(saved["cases"][0]) - {"case"} <= set(saved["definitions"])
    assert saved["cases"][1]["abs_rvd"] == 1.0 and saved["cases"][1]["rvd"] == -1.0
    assert evaluate_folders(pred, gt)["nsd_tolerance_mm"] == 0.42  # INSTANCE 2022's default
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--nsd-tolerance", "0"]) == 2


def test_ground_truth_is_read_through_its_dataset_layout(tmp_path):
    # PhysioNet's masks/ stores blood as 255: read as any hemorrhage, as training reads it.
    pred = tmp_path / "pred"
    physionet = tmp_path / "physionet"
    _write(physionet / "ct_scans", "049", np.zeros(SHAPE, np.uint8))
    _write(physionet / "masks", "049", _blob(255))
    _write(pred, "049", _blob(1))
    report = evaluate_folders(pred, physionet / "masks")
    assert report["cases"][0]["dice"] == 1.0 and report["classes"] == {}
    assert "> 0" in report["gt_labels"]
    # An nnU-Net labelsTr/ numbers subtypes its own way: 1 subdural, 2 epidural here.
    nnunet = tmp_path / "Dataset7_ICH"
    _write(nnunet / "imagesTr", "c_0000", np.zeros(SHAPE, np.uint8))
    _write(nnunet / "labelsTr", "c", _blob(1))
    (nnunet / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "subdural": 1, "epidural": 2}}))
    pred = tmp_path / "pred_subtypes"
    _write(pred, "c", _blob(5))  # SDH in the contract's codes
    report = evaluate_folders(pred, nnunet / "labelsTr")
    assert report["cases"][0]["classes"]["SDH"]["dice"] == 1.0
    assert report["classes"]["SDH"]["cases"] == 1 and report["classes"]["EDH"]["cases"] == 0


def test_subtype_model_predicting_only_edh_is_scored_per_subtype(tmp_path):
    # codes 0/1 on both sides, but the ground truth is BHSD's (subtypes) and the predictions come
    # with a subtype model's volumes.csv: code 1 is EDH on both sides, not "any hemorrhage".
    bhsd = tmp_path / "label_192"
    _write(bhsd / "images", "ID_1_ID_2", np.zeros(SHAPE, np.uint8))
    _write(bhsd / "ground truths", "ID_1_ID_2", _blob(1))
    pred = tmp_path / "pred"
    _write(pred, "ID_1_ID_2", _blob(1))
    (pred / "volumes.csv").write_text("case,voxel_volume_mm3,hemorrhage_ml,EDH_ml,IPH_ml,IVH_ml,"
                                      "SAH_ml,SDH_ml,empty,input\n")
    report = evaluate_folders(pred, bhsd / "ground truths")
    assert report["classes"]["EDH"]["cases"] == 1
    assert report["cases"][0]["classes"]["EDH"]["dice"] == 1.0
