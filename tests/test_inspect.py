"""`ichseg inspect`: the fingerprint's figures, and every bad input giving exit 2 naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main
from ichseg.data.inspect import (
    FOREGROUND_SAMPLES_PER_CASE,
    fingerprint,
    format_fingerprint,
    validate_case,
)
from ichseg.data.layouts import find_cases


def test_fingerprint_figures_match_the_files(tiny_dataset):
    report = fingerprint(tiny_dataset, progress=False)
    written = json.loads((tiny_dataset / "dataset.json").read_text())  # what synth was asked for
    assert (report["layout"], report["num_cases"], report["problems"]) == ("generic", 6, [])
    pooled = []
    for case in report["cases"]:
        image = nib.load(case["image"])
        hu = np.asarray(image.dataobj, dtype=np.float64)
        label = np.asarray(nib.load(case["label"]).dataobj)
        voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
        assert case["shape"] == written["shape"]
        assert case["spacing"] == pytest.approx(written["spacing"], abs=1e-4)
        assert (case["hu"]["min"], case["hu"]["max"]) == (hu.min(), hu.max())
        assert case["label_values"] == sorted(np.unique(label).tolist())
        assert case["hemorrhage_ml"] == pytest.approx(np.count_nonzero(label) * voxel_ml)
        per_class = sum(case["hemorrhage_ml_per_class"].values())
        assert per_class == pytest.approx(case["hemorrhage_ml"])
        pooled.append(hu[label > 0])
    # Below the per-case sample size every foreground voxel counts, so the figures are exact.
    assert max(len(p) for p in pooled) <= FOREGROUND_SAMPLES_PER_CASE
    pooled = np.concatenate(pooled)
    blood = report["summary"]["foreground_hu"]
    assert blood["mean"] == pytest.approx(pooled.mean(), rel=1e-5)
    assert blood["std"] == pytest.approx(pooled.std(), rel=1e-4)
    assert blood["percentile_99_5"] == pytest.approx(np.percentile(pooled, 99.5), rel=1e-5)
    assert report["summary"]["spacing"]["median"] == pytest.approx(written["spacing"], abs=1e-4)
    assert json.loads(json.dumps(report)) == report


def test_cli_prints_the_table_or_json_and_exits_0(tiny_dataset, capsys):
    assert main(["inspect", str(tiny_dataset)]) == 0
    table = capsys.readouterr().out
    assert "synth_005" in table and "no problems found" in table
    assert main(["inspect", str(tiny_dataset), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == fingerprint(tiny_dataset, progress=False)


def _generic(root: Path, write) -> Path:
    for case in ("a", "b"):
        write(root / "images" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz")
    return root


def _save(path: Path, array: np.ndarray, affine=np.diag([0.5, 0.5, 5.0, 1.0])) -> None:
    nib.save(nib.Nifti1Image(array, affine), path)


def _label_of_other_shape(root, write):
    _save(root / "labels" / "b.nii.gz", np.zeros((16, 16, 5), np.uint8))


def _label_of_other_affine(root, write):
    write(root / "spare.nii.gz", root / "labels" / "b.nii.gz",
          affine=np.array([[0.5, 0, 0, 3.0], [0, 0.5, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 1]]))


def _truncate(root, write):
    path = root / "images" / "b.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nans(root, write):
    hu = np.asarray(nib.load(root / "images" / "b.nii.gz").dataobj, np.float32)
    hu[3, 3, 3] = np.nan
    _save(root / "images" / "b.nii.gz", hu)


# mutation of a good two-case generic dataset -> the path the message must name, and what it says
BAD_INPUTS = {
    "image without label": (lambda root, write: (root / "labels" / "b.nii.gz").unlink(),
                            "images/b.nii.gz has no label"),
    "label without image": (lambda root, write: write(root / "spare.nii.gz",
                                                      root / "labels" / "c.nii.gz"),
                            "labels/c.nii.gz has no image"),
    "label of another shape": (_label_of_other_shape, "labels/b.nii.gz has shape"),
    "label of another affine": (_label_of_other_affine, "labels/b.nii.gz has another affine"),
    "label values outside the codes": (
        lambda root, write: write(root / "spare.nii.gz", root / "labels" / "b.nii.gz",
                                  label_value=7),
        "labels/b.nii.gz holds values [7] outside the allowed codes"),
    "not NIfTI": (lambda root, write: (root / "images" / "b.nii.gz").write_text("DICM?"),
                  "images/b.nii.gz is not a readable NIfTI file"),
    "truncated": (_truncate, "images/b.nii.gz is truncated"),
    "NaNs": (_nans, "images/b.nii.gz holds NaN"),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_file_and_changes_nothing(bad, tmp_path, write_small_case,
                                                               capsys):
    root = _generic(tmp_path / "data", write_small_case)
    mutate, message = BAD_INPUTS[bad]
    mutate(root, write_small_case)
    before = _snapshot(tmp_path)
    assert main(["inspect", str(root)]) == 2
    out, err = capsys.readouterr()
    assert f"{root}/{message}" in err
    assert err.count("\n") == 1 and "Traceback" not in err  # one sentence, no traceback
    assert message in out  # the report printed above lists it too
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_empty_or_foreign_folder_exits_2_naming_it(content, tmp_path, capsys):
    if content:
        (tmp_path / content).write_text("not a dataset")
    assert main(["inspect", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert str(tmp_path) in err and "generic (images/ + labels/)" in err
    assert out == ""


def test_all_problems_are_listed_and_the_first_one_exits(tmp_path, write_small_case, capsys):
    root = _generic(tmp_path, write_small_case)
    (root / "labels" / "a.nii.gz").unlink()
    _nans(root, write_small_case)
    assert main(["inspect", str(root)]) == 2
    out, err = capsys.readouterr()
    assert "problems (2)" in out
    assert "images/a.nii.gz has no label" in err and "1 more listed above" in err


def test_validate_case_returns_the_problems_of_one_case(tmp_path, write_small_case):
    root = _generic(tmp_path, write_small_case)
    good = find_cases(root).cases[0]
    assert validate_case(good) == []
    _label_of_other_affine(root, write_small_case)
    (problem,) = validate_case(find_cases(root).cases[1])
    assert problem.startswith(f"label {root}/labels/b.nii.gz has another affine")


def test_physionet_255_masks_are_hemorrhage_and_instance_value_2_is_not(tmp_path,
                                                                       write_small_case):
    physionet = tmp_path / "physionet"
    write_small_case(physionet / "ct_scans" / "049.nii", physionet / "masks" / "049.nii",
                     label_value=255)
    report = fingerprint(physionet, progress=False)
    (case,) = report["cases"]
    assert report["problems"] == [] and case["label_values"] == [0, 255]
    assert case["hemorrhage_ml"] == pytest.approx(3 * 3 * 2 * 0.5 * 0.5 * 5.0 / 1000)
    instance = tmp_path / "instance"
    write_small_case(instance / "data" / "001.nii.gz", instance / "label" / "001.nii.gz",
                     label_value=2)
    (problem,) = fingerprint(instance, progress=False)["problems"]
    assert "holds values [2] outside the allowed codes (0 background, 1 hemorrhage)" in problem


def test_images_that_are_not_hu_are_warnings_not_problems(tmp_path, write_small_case, capsys):
    root = _generic(tmp_path, write_small_case)
    _save(root / "images" / "b.nii.gz", np.full((16, 16, 6), 100, np.int16))
    report = fingerprint(root, progress=False)
    assert report["problems"] == []
    (warning,) = report["warnings"]
    assert "images/b.nii.gz does not look like CT in Hounsfield units" in warning
    assert "warnings (1)" in format_fingerprint(report)
    assert main(["inspect", str(root)]) == 0
