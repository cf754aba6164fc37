"""Every dataset layout trains exactly as it inspects.

The same synthetic voxels are written as faithful copies of each real dataset's conventions
(folder and file names, mask values, nnU-Net's dataset.json, PhysioNet's per-slice CSV with a
byte-order mark) and as a generic twin. Each copy trains (tiny, one short epoch) to the same
model state, tensor for tensor, as its twin: binary copies against the twin trained for any
hemorrhage, subtype copies against the twin trained on subtypes. All cases train (no validation
split), and the case ids sort in the same order in every copy, so the runs see the same batches.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_SHAPE, TINY_SPACING
from trainrun import assert_equal_tree, fast_options, load_last

import ichseg
from ichseg.data.inspect import fingerprint, format_fingerprint
from ichseg.data.layouts import find_cases
from ichseg.data.split import hemorrhage_strata
from ichseg.data.synth import make_case
from ichseg.errors import UsageError

# Synthetic cases holding every subtype between them: IVH, SAH, SDH / EDH, IPH / SDH.
CASE_INDICES = (0, 4, 6)
# nnU-Net's numbering in the copy: its own order, not the contract's, spelled as authors do.
NNUNET_LABELS = {"background": 0, "Subdural": 1, "EDH": 2, "intraparenchymal_hemorrhage": 3,
                 "Subarachnoid haemorrhage": 4, "IVH": 5}
CONTRACT_CODE = {1: 5, 2: 1, 3: 2, 4: 4, 5: 3}  # nnU-Net value -> contract code, for the copy
PHYSIONET_COLUMNS = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural",
                     "Subdural")


@pytest.fixture(scope="module")
def voxels():
    return [make_case(0, TINY_SHAPE, TINY_SPACING, index=i) for i in CASE_INDICES]


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def write_generic(root: Path, voxels) -> Path:
    for k, case in enumerate(voxels):
        _save(root / "images" / f"case_{k}.nii.gz", case.hu, case.affine)
        _save(root / "labels" / f"case_{k}.nii.gz", case.label, case.affine)
    return root


def write_physionet(root: Path, voxels) -> Path:
    """ct_scans/049.nii + masks/049.nii, uncompressed, masks 0/255, the CSV with a BOM."""
    rows = ["PatientNumber,SliceNumber," + ",".join(PHYSIONET_COLUMNS)
            + ",No_Hemorrhage,Fracture_Yes_No"]
    for k, case in enumerate(voxels):
        number = 49 + k
        _save(root / "ct_scans" / f"{number:03d}.nii", case.hu, case.affine)
        _save(root / "masks" / f"{number:03d}.nii", (case.label > 0).astype(np.uint8) * 255,
              case.affine)
        for z in range(case.label.shape[2]):
            present = set(np.unique(case.label[:, :, z]).tolist())
            flags = [int(code in present) for code in (3, 2, 4, 1, 5)]
            rows.append(f"{number},{z + 1}," + ",".join(map(str, flags))
                        + f",{int(not any(flags))},0")
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_bytes(
        ("\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    return root


def write_instance(root: Path, voxels) -> Path:
    """train_2/data/NNN.nii.gz + train_2/label/NNN.nii.gz, labels 0/1."""
    for k, case in enumerate(voxels):
        _save(root / "train_2" / "data" / f"{k + 1:03d}.nii.gz", case.hu, case.affine)
        _save(root / "train_2" / "label" / f"{k + 1:03d}.nii.gz",
              (case.label > 0).astype(np.uint8), case.affine)
    return root


def write_bhsd(root: Path, voxels) -> Path:
    """label_192/images/<PatientID>_<StudyUID>.nii.gz + label_192/ground truths/ (a space)."""
    for k, case in enumerate(voxels):
        name = f"ID_{k:02d}a7c_ID_{k:02d}f3e1.nii.gz"
        _save(root / "label_192" / "images" / name, case.hu, case.affine)
        _save(root / "label_192" / "ground truths" / name, case.label, case.affine)
    return root


def write_nnunet(root: Path, voxels, labels=NNUNET_LABELS) -> Path:
    """Dataset501_ICH/imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz in its own numbering."""
    folder = root / "Dataset501_ICH"
    to_file = {code: value for value, code in CONTRACT_CODE.items()}
    for k, case in enumerate(voxels):
        numbered = np.zeros_like(case.label)
        for code, value in to_file.items():
            numbered[case.label == code] = value
        _save(folder / "imagesTr" / f"ICH_{k:03d}_0000.nii.gz", case.hu, case.affine)
        _save(folder / "labelsTr" / f"ICH_{k:03d}.nii.gz", numbered, case.affine)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(voxels),
        "file_ending": ".nii.gz"}, indent=2))
    return root


def train(data: Path, run: Path, subtypes: bool):
    return ichseg.train(data, run, mode="new", **fast_options(epochs=1, sets=[
        "data.validation_fraction=0", f"data.subtypes={str(subtypes).lower()}"]))


@pytest.fixture(scope="module")
def twins(voxels, tmp_path_factory):
    """The generic twin trained both ways: {subtypes: final model state}."""
    root = write_generic(tmp_path_factory.mktemp("generic"), voxels)
    states = {}
    for subtypes in (False, True):
        run = tmp_path_factory.mktemp("twin") / "run"
        train(root, run, subtypes)
        states[subtypes] = load_last(run)["model_state"]
    return states


COPIES = {"physionet": (write_physionet, False), "instance": (write_instance, False),
          "bhsd": (write_bhsd, True), "nnunet": (write_nnunet, True)}


@pytest.mark.parametrize("layout", list(COPIES))
def test_each_dataset_copy_trains_bit_identical_to_its_generic_twin(layout, voxels, twins,
                                                                     tmp_path):
    write, subtypes = COPIES[layout]
    data = write(tmp_path / "data", voxels)
    report = fingerprint(data, progress=False)
    assert (report["layout"], report["problems"], report["subtypes"]) == (layout, [], subtypes)
    # inspect's volumes are the twin's: every layout's labels read as the same blood.
    expected = [float(np.count_nonzero(c.label)) * float(np.prod(TINY_SPACING)) / 1000
                for c in voxels]
    assert [c["hemorrhage_ml"] for c in report["cases"]] == pytest.approx(expected)
    if layout == "physionet":
        assert report["slice_flags"]["cases"] == 3  # the CSV was read through its BOM
    result = train(data, tmp_path / "run", subtypes)
    assert result.state == "finished"
    assert_equal_tree(load_last(tmp_path / "run")["model_state"], twins[subtypes], "model_state")


@pytest.mark.parametrize("layout", list(COPIES))
def test_each_dataset_copy_splits_its_normal_scans_by_its_own_mask_values(layout, voxels,
                                                                          tmp_path):
    # The second case without hemorrhage: its mask all 0 in the copy's own convention (PhysioNet's
    # uncompressed 0/255 masks, INSTANCE's 0/1, BHSD's and nnU-Net's codes).
    normal = dataclasses.replace(voxels[1], label=np.zeros_like(voxels[1].label))
    write, _ = COPIES[layout]
    index = find_cases(write(tmp_path / "data", [voxels[0], normal, voxels[2]]))
    strata = hemorrhage_strata(index.cases, max_voxels=10**9)
    assert [strata[case.case_id] for case in index.cases] == ["blood", "none", "blood"]


@pytest.mark.parametrize("layout", ["physionet", "instance", "nnunet_binary"])
def test_subtype_training_on_binary_labels_exits_2_before_writing(layout, voxels, tmp_path):
    if layout == "nnunet_binary":
        data = write_nnunet(tmp_path / "data", voxels[:2],
                            labels={"background": 0, "hemorrhage": 1, "EDH": 2})
        expected = "'hemorrhage'"
    else:
        data = COPIES[layout][0](tmp_path / "data", voxels[:2])
        expected = {"physionet": "PhysioNet", "instance": "INSTANCE"}[layout]
    run = tmp_path / "run"
    with pytest.raises(UsageError, match="data.subtypes=true needs labels") as refused:
        train(data, run, subtypes=True)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    # inspect says the same before anyone tries.
    report = fingerprint(data, progress=False)
    assert report["subtypes"] is False and report["subtypes_note"] in str(refused.value)
    assert f"no: {report['subtypes_note']}" in format_fingerprint(report)
    assert not run.exists()


def test_nnunet_labels_follow_dataset_json_names(tmp_path, voxels):
    write_nnunet(tmp_path, voxels[:1])
    mapping = find_cases(tmp_path).label_mapping
    assert not mapping.binary
    assert [mapping.codes[v] for v in range(1, 6)] == [CONTRACT_CODE[v] for v in range(1, 6)]
    # One name alone called "ICH" marks any hemorrhage (INSTANCE's usage), not IPH.
    write_nnunet(tmp_path / "alone", voxels[:1], labels={"background": 0, "ICH": 1})
    alone = find_cases(tmp_path / "alone").label_mapping
    assert alone.binary and "'ICH'" in alone.why_binary


def test_inspect_and_train_name_the_same_problem(tmp_path, voxels):
    data = write_instance(tmp_path / "data", voxels[:2])
    bad = data / "train_2" / "label" / "002.nii.gz"
    _save(bad, voxels[1].label, voxels[1].affine)  # subtype codes where INSTANCE has 0/1
    problems = fingerprint(data, progress=False)["problems"]
    assert len(problems) == 1 and "002.nii.gz" in problems[0]
    with pytest.raises(UsageError) as refused:
        train(data, tmp_path / "run", subtypes=False)
    assert str(refused.value) == problems[0]
