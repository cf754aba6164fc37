"""Each dataset layout of the contract detected and paired from a tiny folder built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ichseg.data.layouts import LABEL_MAPPINGS, detect_layout, find_cases, label_folder_mapping
from ichseg.errors import UsageError

# layout -> (dataset folder below the root, image path, label path) per case, as the real
# datasets name them.
LAYOUT_FILES = {
    "generic": ("", {"a": ("images/a.nii.gz", "labels/a.nii.gz"),
                     "b": ("images/b.nii", "labels/b.nii")}),
    "nnunet": ("Dataset101_ICH", {"ich_001": ("imagesTr/ich_001_0000.nii.gz",
                                              "labelsTr/ich_001.nii.gz"),
                                  "ich_002": ("imagesTr/ich_002_0000.nii.gz",
                                              "labelsTr/ich_002.nii.gz")}),
    "physionet": ("", {"049": ("ct_scans/049.nii", "masks/049.nii"),
                       "066": ("ct_scans/066.nii", "masks/066.nii")}),
    "instance": ("train", {"001": ("data/001.nii.gz", "label/001.nii.gz"),
                           "002": ("data/002.nii.gz", "label/002.nii.gz")}),
    "instance_train_2": ("train_2", {"001": ("data/001.nii.gz", "label/001.nii.gz")}),
    "bhsd": ("label_192", {"ID_0a1": ("images/ID_0a1.nii.gz", "ground truths/ID_0a1.nii.gz")}),
    "bhsd_underscore": ("", {"ID_0a1": ("images/ID_0a1.nii.gz",
                                        "ground_truths/ID_0a1.nii.gz")}),
}


def _build(root: Path, variant: str, write) -> Path:
    below, cases = LAYOUT_FILES[variant]
    folder = root / below
    for image, label in cases.values():
        write(folder / image, folder / label)
    return folder


@pytest.mark.parametrize("variant", list(LAYOUT_FILES))
def test_each_layout_is_detected_and_paired(variant, tmp_path, write_small_case):
    folder = _build(tmp_path, variant, write_small_case)
    layout = variant.split("_")[0]
    assert detect_layout(tmp_path) == layout
    index = find_cases(tmp_path)
    assert (index.layout, index.root, index.problems) == (layout, folder, [])
    expected = LAYOUT_FILES[variant][1]
    assert [c.case_id for c in index.cases] == sorted(expected)
    for case in index.cases:
        image, label = expected[case.case_id]
        assert (case.image, case.label) == (folder / image, folder / label)
    # Naming the layout gives the same index.
    assert find_cases(tmp_path, layout=layout).cases == index.cases


def test_physionet_csv_with_byte_order_mark_gives_slice_flags(tmp_path, write_small_case):
    _build(tmp_path, "physionet", write_small_case)
    rows = ["PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,"
            "Subdural,No_Hemorrhage,Fracture_Yes_No",
            "49,1,0,0,0,0,0,1,0",
            "49,2,1,0,0,1,0,0,1",
            "66,1,0,1,0,0,0,0,0",
            "60,1,0,0,0,0,1,0,0"]  # patient 060 has no NIfTI in v1.3.1: skipped
    (tmp_path / "hemorrhage_diagnosis_raw_ct.csv").write_bytes(
        ("\n".join(rows) + "\n").encode("utf-8-sig"))
    flags = find_cases(tmp_path).extras["slice_flags"]
    assert sorted(flags) == ["049", "066"]
    assert flags["049"][2] == {"Intraventricular": 1, "Intraparenchymal": 0, "Subarachnoid": 0,
                               "Epidural": 1, "Subdural": 0, "No_Hemorrhage": 0,
                               "Fracture_Yes_No": 1}
    assert flags["066"][1]["Intraparenchymal"] == 1


def test_physionet_csv_without_patient_column_is_refused(tmp_path, write_small_case):
    _build(tmp_path, "physionet", write_small_case)
    (tmp_path / "hemorrhage_diagnosis_raw_ct.csv").write_text("Patient,SliceNumber\n49,1\n")
    with pytest.raises(UsageError, match="hemorrhage_diagnosis_raw_ct.csv lacks the column"):
        find_cases(tmp_path)


def test_label_mappings_turn_file_values_into_contract_codes():
    physionet = LABEL_MAPPINGS["physionet"]
    np.testing.assert_array_equal(physionet.to_codes(np.array([0, 1, 255], np.uint8)), [0, 1, 1])
    assert physionet.binary and physionet.invalid_values([0, 255]) == []
    assert LABEL_MAPPINGS["instance"].invalid_values([0, 1, 2]) == [2]
    assert LABEL_MAPPINGS["bhsd"].invalid_values(range(8)) == [6, 7]
    assert not LABEL_MAPPINGS["bhsd"].binary


def test_empty_folder_names_it_and_the_layouts_looked_for(tmp_path):
    with pytest.raises(UsageError, match=f"{tmp_path} is empty") as info:
        find_cases(tmp_path)
    for layout in LABEL_MAPPINGS:
        assert layout in str(info.value)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(UsageError, match=f"no dataset layout recognised in {tmp_path}"):
        detect_layout(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        find_cases(tmp_path / "missing")


def test_image_without_label_and_label_without_image(tmp_path, write_small_case):
    _build(tmp_path, "generic", write_small_case)
    write_small_case(tmp_path / "images" / "orphan.nii.gz", None)
    write_small_case(tmp_path / "spare.nii.gz", tmp_path / "labels" / "stray.nii.gz")
    with pytest.raises(UsageError, match=r"image .*images/orphan.nii.gz has no label"):
        find_cases(tmp_path)
    index = find_cases(tmp_path, strict=False)
    assert [c.case_id for c in index.cases] == ["a", "b"]
    assert len(index.problems) == 2
    assert "labels/stray.nii.gz has no image" in index.problems[1]


def test_nnunet_second_channel_and_misnamed_images_are_problems(tmp_path, write_small_case):
    folder = _build(tmp_path, "nnunet", write_small_case)
    write_small_case(folder / "imagesTr" / "ich_001_0001.nii.gz", None)
    write_small_case(folder / "imagesTr" / "loose.nii.gz", None)
    problems = find_cases(tmp_path, strict=False).problems
    assert len(problems) == 2
    assert "ich_001_0001.nii.gz is a further input channel" in problems[0]
    assert "loose.nii.gz is not named <case>_0000.nii.gz" in problems[1]


def test_two_datasets_below_the_root_are_refused(tmp_path, write_small_case):
    _build(tmp_path, "instance", write_small_case)
    _build(tmp_path, "instance_train_2", write_small_case)
    with pytest.raises(UsageError, match="holds several datasets.*train.*train_2"):
        find_cases(tmp_path)
    assert find_cases(tmp_path / "train_2").root == tmp_path / "train_2"


def test_a_named_layout_that_is_not_there_is_refused(tmp_path, write_small_case):
    _build(tmp_path, "generic", write_small_case)
    with pytest.raises(UsageError, match=r"looked for: bhsd \(images/ \+ ground truths/"):
        find_cases(tmp_path, layout="bhsd")
    with pytest.raises(UsageError, match="unknown layout 'kaggle'"):
        find_cases(tmp_path, layout="kaggle")


def test_a_macos_zip_shadow_folder_is_not_a_second_dataset(tmp_path, write_small_case):
    folder = _build(tmp_path, "bhsd", write_small_case)
    shadow = tmp_path / "__MACOSX" / "label_192"
    for sub in ("images", "ground truths"):
        (shadow / sub).mkdir(parents=True)
        (shadow / sub / "._ID_0a1.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    index = find_cases(tmp_path)
    assert (index.layout, index.root, len(index.cases)) == ("bhsd", folder, 1)


def _nnunet(tmp_path: Path, write, labels) -> Path:
    folder = _build(tmp_path, "nnunet", write)
    if labels is not None:
        (folder / "dataset.json").write_text(labels if isinstance(labels, str)
                                             else json.dumps({"labels": labels}))
    return folder


def test_nnunet_label_names_map_to_contract_codes_in_any_spelling(tmp_path, write_small_case):
    _nnunet(tmp_path, write_small_case, {"background": 0, "SDH": 1, "Epidural_Hemorrhage": 2,
                                         "intra-ventricular": 3, "IPH": 4, "sah": 5})
    mapping = find_cases(tmp_path).label_mapping
    assert not mapping.binary and mapping.allowed == (0, 1, 2, 3, 4, 5)
    file_values = np.array([[[0, 1, 2, 3, 4, 5]]], dtype=np.uint8)
    assert mapping.to_codes(file_values).tolist() == [[[0, 5, 1, 3, 2, 4]]]
    assert mapping.invalid_values([0, 6]) == [6]
    assert "1 SDH -> SDH" in mapping.description


def test_nnunet_v1_labels_table_is_read_value_first(tmp_path, write_small_case):
    _nnunet(tmp_path, write_small_case, {"0": "background", "1": "subdural", "2": "epidural"})
    assert find_cases(tmp_path).label_mapping.to_codes(np.array([2, 1, 0])).tolist() == [1, 5, 0]


@pytest.mark.parametrize("labels, named", [
    ({"background": 0, "hemorrhage": 1}, "1 'hemorrhage'"),
    ({"background": 0, "EDH": 1, "tumour": 2}, "2 'tumour'"),
    (None, "has no dataset.json"),
])
def test_nnunet_labels_that_cannot_say_subtypes_make_a_binary_dataset(tmp_path, write_small_case,
                                                                     labels, named):
    _nnunet(tmp_path, write_small_case, labels)
    mapping = find_cases(tmp_path).label_mapping
    assert mapping.binary and named in mapping.why_binary
    assert mapping.to_codes(np.array([0, 1, 2])).tolist() == [0, 1, 1]  # any label is blood


def test_nnunet_ignore_label_is_refused_rather_than_read_as_blood(tmp_path, write_small_case):
    # nnU-Net v2 dataset.json with sparse annotation: "ignore" is the highest value, unlabelled
    _nnunet(tmp_path, write_small_case, {"background": 0, "hemorrhage": 1, "ignore": 2})
    with pytest.raises(UsageError, match=r"dataset.json has an \"ignore\" label \(value 2"):
        find_cases(tmp_path)


def test_unreadable_dataset_json_names_the_file(tmp_path, write_small_case):
    _nnunet(tmp_path, write_small_case, '{"name": "no labels here"}')
    with pytest.raises(UsageError, match=r"dataset.json has no \"labels\" table"):
        find_cases(tmp_path)


def test_label_folder_mapping_recognises_each_layouts_label_folder(tmp_path, write_small_case):
    folder = _build(tmp_path / "p", "physionet", write_small_case)
    assert label_folder_mapping(folder / "masks") == ("physionet", LABEL_MAPPINGS["physionet"])
    folder = _build(tmp_path / "b", "bhsd", write_small_case)
    assert label_folder_mapping(folder / "ground truths")[0] == "bhsd"
    assert label_folder_mapping(folder / "images") == (None, LABEL_MAPPINGS["generic"])
    assert label_folder_mapping(tmp_path) == (None, LABEL_MAPPINGS["generic"])
