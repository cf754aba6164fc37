"""Which cases train and which validate: a pure function of the case ids, their patients and the
seed, so a run's split (or fold) is rebuilt exactly from its config.

Scans of one patient always land on the same side (a second study of a patient in validation
would score the model on anatomy it trained on). The patient of a case is, first found:
1. the `data.group_by` pattern's first group (or whole match) in the case id, when it is set;
2. the DICOM PatientID the case's files carry (a DICOM series folder, or dcm2niix's JSON sidecar
   `<case>.json` beside a NIfTI image);
3. the layout's naming rule: BHSD case ids are RSNA's `<PatientID>_<StudyUID>` (`ID_2db7ee14_ID_...`);
4. else the case itself.

Two splits: `make_split` holds out `validation_fraction` of the cases; `make_folds` partitions
them into `data.folds` folds for cross-validation, fold K validating on part K. Both can be
stratified on whether a scan holds hemorrhage (`data.stratify`): a validation side without a
normal scan cannot see false blood, and judges the model and its postprocessing blind to it.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.errors import UsageError

log = logging.getLogger("ichseg.data")

# Keeps the split's draws apart from every other use of the same seed (patches, model init).
_SPLIT_STREAM = 0x5B117
_FOLD_STREAM = 0xF01D5

# Layouts whose case ids name the patient: the first group of the pattern is the patient.
# BHSD (from RSNA 2019): `ID_<8 hex>` patient, `_`, then `ID_<10 hex>` study.
LAYOUT_PATIENT_PATTERNS = {"bhsd": r"^(ID_[0-9A-Za-z]+)_ID_"}


def _sorted_groups(case_ids: Iterable[str],
                   groups: Mapping[str, str] | None) -> list[list[str]]:
    """The cases gathered by patient: each group sorted, groups sorted by their first case."""
    ids = sorted(set(case_ids))
    if not ids:
        raise UsageError("the dataset has no cases to split into training and validation")
    members: dict[str, list[str]] = {}
    for case in ids:
        members.setdefault(groups.get(case, case) if groups else case, []).append(case)
    return sorted(members.values())


def _stratum_of(patients: list[list[str]], strata: Mapping[str, str] | None) -> list[str]:
    """Each patient's stratum: the first of its cases' strata in sorted order of the strata's
    names ("blood" before "none": a patient with any scan holding hemorrhage counts as one)."""
    if not strata:
        return ["" for _ in patients]
    return [min(strata.get(case, "") for case in patient) for patient in patients]


def _quotas(sizes: Mapping[str, int], count: int) -> dict[str, int]:
    """`count` shared among the strata in proportion to their sizes, largest remainder first
    (ties by name), so that a stratum of one in six gets its case out of five."""
    total = sum(sizes.values())
    exact = {name: count * size / total for name, size in sizes.items()}
    quotas = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (quotas[name] - exact[name], name))
    for name in by_remainder[:count - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


def make_split(case_ids: Iterable[str], validation_fraction: float, seed: int,
               groups: Mapping[str, str] | None = None,
               strata: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """{"train": [...], "validation": [...]}, each sorted, deterministic for the same inputs.

    The ids are sorted first, so the split does not depend on the order the files were listed
    in. `groups` (case id -> patient key; a case not in it is its own patient) keeps each
    patient's cases on one side: patients are drawn in a seeded order until validation holds
    at least the fraction's share of cases. With a fraction above 0 and at least two patients,
    validation gets at least one; the training side always keeps at least one. Without groups
    (or one case per patient) the validation side holds exactly the fraction's share, rounded.
    `strata` (case id -> stratum, such as "blood" and "none") holds out each stratum's share of
    that count (largest remainder), drawn in the same seeded order, so that validation sees
    scans without hemorrhage in proportion; one patient of each stratum always trains.
    """
    patients = _sorted_groups(case_ids, groups)
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError("setting data.validation_fraction must lie in [0, 1)")
    total = sum(len(p) for p in patients)
    count = int(round(validation_fraction * total))
    if validation_fraction > 0 and total >= 2:
        count = max(count, 1)
    stratum = _stratum_of(patients, strata)
    sizes = Counter()
    for patient, name in zip(patients, stratum, strict=True):
        sizes[name] += len(patient)
    quota = _quotas(sizes, count)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(patients))
    held_out: set[str] = set()
    for name in sorted(sizes):
        members = [index for index in order if stratum[index] == name]
        taken = 0
        for position, index in enumerate(members):
            # One patient of the stratum always trains.
            if taken >= quota[name] or position == len(members) - 1:
                break
            held_out.update(patients[index])
            taken += len(patients[index])
    ids = [case for patient in patients for case in patient]
    return {"train": sorted(c for c in ids if c not in held_out),
            "validation": sorted(c for c in ids if c in held_out)}


def make_folds(case_ids: Iterable[str], folds: int, seed: int,
               groups: Mapping[str, str] | None = None,
               strata: Mapping[str, str] | None = None) -> list[list[str]]:
    """`folds` disjoint sorted lists of case ids that together hold every case; a patient's
    cases are all in one fold. Deterministic for the same ids, groups, strata and seed.

    Patients are shuffled by the seed, then (largest first, a stable sort) each joins the fold
    holding the fewest cases so far, so folds differ in size by at most the largest patient.
    With `strata` the strata are dealt out one after the other, smallest first, each patient
    joining the fold with the fewest cases of its stratum (then the fewest cases): every fold
    validates on scans with and without hemorrhage in proportion.
    """
    patients = _sorted_groups(case_ids, groups)
    if folds < 2:
        raise UsageError(f"setting data.folds must be at least 2 for cross-validation, got {folds}")
    if folds > len(patients):
        raise UsageError(f"setting data.folds is {folds}, but the dataset has only "
                         f"{len(patients)} patients to spread over the folds")
    stratum = _stratum_of(patients, strata)
    order = np.random.default_rng([seed, _FOLD_STREAM]).permutation(len(patients))
    sizes = Counter(stratum)
    parts: list[list[str]] = [[] for _ in range(folds)]
    for name in sorted(sizes, key=lambda name: (sizes[name], name)):
        in_stratum = [0] * folds
        members = sorted((i for i in order if stratum[i] == name),
                         key=lambda i: len(patients[i]), reverse=True)
        for index in members:
            # The first of the smallest: deterministic.
            fold = min(range(folds), key=lambda k: (in_stratum[k], len(parts[k])))
            parts[fold].extend(patients[index])
            in_stratum[fold] += len(patients[index])
    return [sorted(part) for part in parts]


def fold_split(case_ids: Iterable[str], folds: int, fold: int, seed: int,
               groups: Mapping[str, str] | None = None,
               strata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Fold `fold` (0-based, nnU-Net's numbering) of `make_folds`: it validates on its part and
    trains on the others. The dict also says which fold it is (split.json)."""
    if not 0 <= fold < folds:
        raise UsageError(f"--fold {fold} must lie between 0 and {folds - 1} "
                         f"(setting data.folds is {folds})")
    parts = make_folds(case_ids, folds, seed, groups, strata)
    return {"train": sorted(c for k, part in enumerate(parts) if k != fold for c in part),
            "validation": parts[fold], "fold": fold, "folds": folds}


# --- who the patient is -------------------------------------------------------------------------

def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"setting data.group_by {pattern!r} is not a regular expression: "
                         f"{exc}") from None


def _key(match: re.Match[str]) -> str:
    return match.group(1) if match.re.groups and match.group(1) else match.group(0)


def _dicom_patient(image: Path) -> str | None:
    """The PatientID a case's files carry: dcm2niix's JSON sidecar beside a NIfTI image, or the
    first DICOM file of a series folder. None when there is none (anonymised data)."""
    if image.is_dir():
        import pydicom

        from ichseg.data.dicom import dicom_files

        files = dicom_files(image)
        if not files:
            return None
        try:
            dataset = pydicom.dcmread(files[0], stop_before_pixels=True,
                                      specific_tags=["PatientID"])
        except (OSError, pydicom.errors.InvalidDicomError):
            return None
        value = str(dataset.get("PatientID", "") or "").strip()
        return value or None
    name = image.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else image.stem
    sidecar = image.with_name(f"{stem}.json")
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text()).get("PatientID")
    except (OSError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    return str(value).strip() or None


def patient_groups(cases: Sequence[Any], layout: str, group_by: str = "") -> dict[str, str]:
    """case id -> patient key for `cases` (each with `case_id` and `image`), by the rules of the
    module docstring. A `group_by` pattern that matches no case id is a UsageError."""
    keys: dict[str, str] = {}
    if group_by:
        pattern = _compile(group_by)
        for case in cases:
            match = pattern.search(case.case_id)
            if match is None or not _key(match):
                raise UsageError(f"setting data.group_by {group_by!r} finds no patient in case "
                                 f"id {case.case_id!r}")
            keys[case.case_id] = _key(match)
        return keys
    layout_pattern = LAYOUT_PATIENT_PATTERNS.get(layout)
    unnamed = []
    for case in cases:
        patient = _dicom_patient(Path(case.image))
        if patient is not None:
            keys[case.case_id] = f"dicom:{patient}"
            continue
        match = re.search(layout_pattern, case.case_id) if layout_pattern else None
        if match is not None:
            keys[case.case_id] = _key(match)
        else:
            if layout_pattern:
                unnamed.append(case.case_id)
            keys[case.case_id] = case.case_id
    if unnamed:
        log.warning("%d case id(s) of the %s layout do not name their patient (e.g. %s): each is "
                    "taken as its own patient; set data.group_by to group them", len(unnamed),
                    layout, unnamed[0])
    return keys


def hemorrhage_strata(cases: Sequence[Any], max_voxels: int) -> dict[str, str]:
    """"blood" or "none" per case: whether its label map marks any voxel (read one at a time)."""
    from tqdm import tqdm

    from ichseg.data.io import read_label

    return {case.case_id: "blood" if read_label(case.label, max_voxels).array.any() else "none"
            for case in tqdm(cases, desc="reading labels for the split", unit="case",
                             disable=None, leave=False)}


def split_for(cases: Sequence[Any], layout: str, data_cfg: Any, seed: int) -> dict[str, Any]:
    """The split of a run: fold `data.fold` of `data.folds` when a fold is set, else the held-out
    `data.validation_fraction`; patients kept together either way, and with `data.stratify`
    scans without hemorrhage in proportion on both sides (their label maps read once here)."""
    groups = patient_groups(cases, layout, data_cfg.group_by)
    strata = hemorrhage_strata(cases, data_cfg.max_voxels) if data_cfg.stratify else None
    ids = [case.case_id for case in cases]
    shared = sum(1 for n in Counter(groups.values()).values() if n > 1)
    if shared:
        log.info("%d patients have more than one scan: each patient's scans stay on one side "
                 "of the split", shared)
    if data_cfg.fold >= 0:
        return fold_split(ids, data_cfg.folds, data_cfg.fold, seed, groups, strata)
    return make_split(ids, data_cfg.validation_fraction, seed, groups, strata)
