"""The split and the cross-validation folds: deterministic, order-independent, with the
minimums on each side, and a patient's scans never on both sides."""

from __future__ import annotations

import json

import pytest

from ichseg.data.layouts import Case
from ichseg.data.split import fold_split, make_folds, make_split, patient_groups
from ichseg.errors import UsageError

IDS = [f"case_{k:03d}" for k in range(20)]


def test_same_inputs_same_split_whatever_the_listing_order():
    split = make_split(IDS, 0.2, seed=5)
    assert make_split(list(reversed(IDS)), 0.2, seed=5) == split
    assert len(split["validation"]) == 4 and len(split["train"]) == 16
    assert sorted(split["train"] + split["validation"]) == IDS
    assert split["train"] == sorted(split["train"])


def test_seed_changes_the_held_out_cases():
    held_out = {tuple(make_split(IDS, 0.2, seed)["validation"]) for seed in range(6)}
    assert len(held_out) > 1


@pytest.mark.parametrize("count,fraction,validation", [
    (2, 0.01, 1),   # a fraction above 0 always holds one case out ...
    (2, 0.9, 1),    # ... and training keeps at least one
    (5, 0.0, 0),
    (1, 0.5, 0),    # a single case trains; nothing to validate on
    (10, 0.25, 2),  # 2.5 rounds to 2 (banker's rounding is fine, it is deterministic)
])
def test_minimum_cases_on_each_side(count, fraction, validation):
    split = make_split(IDS[:count], fraction, seed=0)
    assert len(split["validation"]) == validation
    assert len(split["train"]) == count - validation >= 1


def test_no_cases_is_a_usage_error():
    with pytest.raises(UsageError, match="no cases"):
        make_split([], 0.2, seed=0)


# --- patients kept together, and cross-validation folds -----------------------------------------

# BHSD's case ids are RSNA's <PatientID>_<StudyUID>: patient ID_2db7ee14 has three studies here.
BHSD_IDS = ["ID_2db7ee14_ID_0a1b2c3d4e", "ID_2db7ee14_ID_1f2e3d4c5b", "ID_2db7ee14_ID_99aa88bb77",
            "ID_0219ef88_ID_e5c1a31210", "ID_0219ef88_ID_77c1a31210",
            *(f"ID_{k:08x}_ID_{k:010x}" for k in range(1, 16))]


def _bhsd_cases(tmp_path):
    return [Case(case_id, tmp_path / f"{case_id}.nii.gz") for case_id in BHSD_IDS]


def _sides(split):
    return set(split["train"]), set(split["validation"])


def test_bhsd_patients_never_straddle_the_split(tmp_path):
    groups = patient_groups(_bhsd_cases(tmp_path), "bhsd")
    assert groups["ID_2db7ee14_ID_1f2e3d4c5b"] == "ID_2db7ee14"
    assert len(set(groups.values())) == 17
    for seed in range(30):  # every seed: a case-level split would leak some patient
        train, validation = _sides(make_split(BHSD_IDS, 0.2, seed, groups))
        assert train.isdisjoint(validation) and train | validation == set(BHSD_IDS)
        assert {groups[c] for c in train}.isdisjoint({groups[c] for c in validation})
        assert len(validation) >= 4
    leaked = [seed for seed in range(30) if _leaks(make_split(BHSD_IDS, 0.2, seed), groups)]
    assert leaked, "the grouped split must differ from the plain one somewhere"


def _leaks(split, groups):
    train, validation = _sides(split)
    return not {groups[c] for c in train}.isdisjoint({groups[c] for c in validation})


def test_group_by_pattern_and_dicom_patient_id(tmp_path):
    cases = [Case(f"pat{p}_scan{s}", tmp_path / f"pat{p}_scan{s}.nii.gz")
             for p in range(4) for s in range(2)]
    groups = patient_groups(cases, "generic", r"^(pat\d+)_")
    assert groups == {c.case_id: c.case_id.split("_")[0] for c in cases}
    # The whole match is the key when the pattern has no group.
    assert patient_groups(cases, "generic", r"pat\d")["pat3_scan1"] == "pat3"
    with pytest.raises(UsageError, match="data.group_by.*case id 'pat0_scan0'"):
        patient_groups(cases, "generic", r"^patient")
    with pytest.raises(UsageError, match="not a regular expression"):
        patient_groups(cases, "generic", r"(")
    # dcm2niix's JSON sidecar names the patient, whatever the file is called.
    (tmp_path / "pat0_scan1.json").write_text(json.dumps({"PatientID": "P7"}))
    (tmp_path / "pat2_scan0.json").write_text(json.dumps({"PatientID": "P7"}))
    groups = patient_groups(cases, "generic")
    assert groups["pat0_scan1"] == groups["pat2_scan0"] != groups["pat0_scan0"]
    assert len(set(groups.values())) == 7


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_partition_the_cases_and_never_split_a_patient(tmp_path, folds):
    groups = patient_groups(_bhsd_cases(tmp_path), "bhsd")
    parts = make_folds(BHSD_IDS, folds, seed=3, groups=groups)
    assert len(parts) == folds
    assert sorted(c for part in parts for c in part) == sorted(BHSD_IDS)
    owner = {groups[c]: k for k, part in enumerate(parts) for c in part}
    assert all(owner[groups[c]] == k for k, part in enumerate(parts) for c in part)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 3  # the largest patient has three scans
    assert make_folds(list(reversed(BHSD_IDS)), folds, seed=3, groups=groups) == parts
    assert make_folds(BHSD_IDS, folds, seed=4, groups=groups) != parts
    for k in range(folds):
        split = fold_split(BHSD_IDS, folds, k, seed=3, groups=groups)
        assert split["validation"] == parts[k] and split["fold"] == k
        assert sorted(split["train"] + split["validation"]) == sorted(BHSD_IDS)
        assert not _leaks(split, groups)


def test_fold_numbers_and_counts_are_checked():
    with pytest.raises(UsageError, match="--fold 5 must lie between 0 and 4"):
        fold_split(IDS, 5, 5, seed=0)
    with pytest.raises(UsageError, match="only 3 patients"):
        make_folds(IDS[:3], 4, seed=0)
    with pytest.raises(UsageError, match="at least 2"):
        make_folds(IDS, 1, seed=0)


def test_ungrouped_split_is_unchanged_by_one_case_per_patient():
    groups = {c: f"patient-of-{c}" for c in IDS}
    for seed in range(5):
        assert make_split(IDS, 0.3, seed, groups) == make_split(IDS, 0.3, seed)


# --- scans without hemorrhage on both sides ------------------------------------------------------

# 24 cases, four without hemorrhage (the demo's training phantoms hold four in 24).
STRATA = {case: "none" if k in (2, 3, 14, 18) else "blood" for k, case in enumerate(IDS + [
    f"case_{k:03d}" for k in range(20, 24)])}


def test_a_stratified_split_holds_out_scans_without_hemorrhage_in_proportion():
    ids = sorted(STRATA)
    for seed in range(20):
        split = make_split(ids, 0.2, seed, strata=STRATA)
        assert len(split["validation"]) == 5 and sorted(split["train"] + split["validation"]) == ids
        # 5 x 4 / 24 = 0.83 of a case: one, whatever the seed (unstratified, half the seeds
        # validate on none of them).
        assert [STRATA[c] for c in split["validation"]].count("none") == 1, seed
    assert make_split(list(reversed(ids)), 0.2, 3, strata=STRATA) == make_split(ids, 0.2, 3,
                                                                                 strata=STRATA)
    unstratified = [make_split(ids, 0.2, seed)["validation"] for seed in range(20)]
    assert any(all(STRATA[c] == "blood" for c in held) for held in unstratified)


def test_one_scan_of_a_stratum_always_trains():
    strata = {case: "none" if case == "case_000" else "blood" for case in IDS}
    for seed in range(10):
        # 18 to hold out: 0.9 of a case from its stratum, which it cannot give.
        split = make_split(IDS, 0.9, seed, strata=strata)
        assert "case_000" in split["train"] and len(split["validation"]) == 17


def test_stratified_folds_deal_the_scans_without_hemorrhage_evenly():
    ids = sorted(STRATA)
    parts = make_folds(ids, 4, seed=1, strata=STRATA)
    assert sorted(c for part in parts for c in part) == ids
    assert [[STRATA[c] for c in part].count("none") for part in parts] == [1, 1, 1, 1]
    assert [len(part) for part in parts] == [6, 6, 6, 6]
    assert make_folds(ids, 4, seed=1, strata=STRATA) == parts


def test_a_run_split_reads_the_label_maps_and_stratifies_unless_told_not_to(tmp_path):
    import numpy as np

    from ichseg.config import preset_config
    from ichseg.data.io import write_nifti
    from ichseg.data.split import split_for

    ids = sorted(STRATA)
    cases = []
    for case_id in ids:
        label = np.zeros((8, 8, 4), np.uint8)
        label[2, 2, 1] = 0 if STRATA[case_id] == "none" else 5  # one voxel of SDH
        write_nifti(tmp_path / f"{case_id}.nii.gz", label, np.eye(4))
        cases.append(Case(case_id, tmp_path / "unused.nii.gz", tmp_path / f"{case_id}.nii.gz"))
    data = preset_config("small").data
    assert data.stratify
    for seed in range(8):
        split = split_for(cases, "generic", data, seed)
        assert split == make_split(ids, 0.2, seed, strata=STRATA)
    data.stratify = False
    assert split_for(cases, "generic", data, 3) == make_split(ids, 0.2, 3)
    data.stratify, data.fold = True, 2
    assert split_for(cases, "generic", data, 3) == fold_split(ids, 5, 2, 3, strata=STRATA)
