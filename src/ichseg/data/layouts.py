"""Finding the cases of a dataset in any of the contract's five layouts.

generic    images/<case>.nii[.gz]            + labels/<case>.nii[.gz]
nnunet     imagesTr/<case>_0000.nii.gz       + labelsTr/<case>.nii.gz
physionet  ct_scans/NNN.nii                  + masks/NNN.nii  (+ hemorrhage_diagnosis_raw_ct.csv)
instance   .../data/NNN.nii.gz               + .../label/NNN.nii.gz  (often under train/ or train_2/)
bhsd       images/<case>.nii.gz              + "ground truths/" or ground_truths/

The dataset may be the folder given or sit one or two levels below it (`train/`, `label_192/`).
Each layout also says how its label values become the contract's codes (`LabelMapping`).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.data.io import NNUNET_CHANNEL_SUFFIX, nifti_files, nifti_stem
from ichseg.errors import UsageError

# The contract's label codes (BHSD's order).
CODES = {0: "background", 1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}

# PhysioNet CT-ICH's per-slice CSV columns for the five subtypes, with their contract codes.
PHYSIONET_SUBTYPE_CODES = {"Epidural": 1, "Intraparenchymal": 2, "Intraventricular": 3,
                           "Subarachnoid": 4, "Subdural": 5}
PHYSIONET_CSV = "hemorrhage_diagnosis_raw_ct.csv"
_PHYSIONET_FLAGS = (*PHYSIONET_SUBTYPE_CODES, "No_Hemorrhage", "Fracture_Yes_No")


@dataclass(frozen=True)
class LabelMapping:
    """How a layout's label-file values become the contract's codes.

    `allowed`: the file values accepted (any other is a problem), or None when every value above
    0 means "hemorrhage" and is binarised. `codes`: the contract code of each file value
    (`codes[v]`), or None when the file values are the codes. `binary`: the labels mark any
    hemorrhage only, and `why_binary` says why in a clause, for refusing subtype training.
    """

    allowed: tuple[int, ...] | None
    binary: bool
    description: str
    codes: tuple[int, ...] | None = None
    why_binary: str = ""

    def invalid_values(self, values: np.ndarray | list[int]) -> list[int]:
        """The values among `values` (distinct label values) that this layout does not allow."""
        if self.allowed is None:
            return []
        return sorted(int(v) for v in values if int(v) not in self.allowed)

    def to_codes(self, label: np.ndarray) -> np.ndarray:
        """The label map in contract codes (uint8); the caller has checked `invalid_values`.

        A binary dataset gives 1 for any value above 0, whatever its files store."""
        if self.allowed is None or self.binary:
            return (np.asarray(label) > 0).astype(np.uint8)
        if self.codes is None:
            return np.asarray(label, dtype=np.uint8)
        return np.asarray(self.codes, dtype=np.uint8)[label]


_SUBTYPE_CODES = LabelMapping(tuple(CODES), binary=False,
                              description="codes 0-5: background, EDH, IPH, IVH, SAH, SDH")
LABEL_MAPPINGS: dict[str, LabelMapping] = {
    "generic": _SUBTYPE_CODES,
    # Replaced by the names in the dataset's dataset.json (`nnunet_label_mapping`).
    "nnunet": _SUBTYPE_CODES,
    "bhsd": _SUBTYPE_CODES,
    # PhysioNet masks mark any hemorrhage; some copies store it as 255, so binarise with > 0.
    "physionet": LabelMapping(None, binary=True, description="any value > 0 is hemorrhage",
                              why_binary="PhysioNet CT-ICH masks mark any hemorrhage (its "
                                         "subtypes are given per slice only)"),
    "instance": LabelMapping((0, 1), binary=True, description="0 background, 1 hemorrhage",
                             why_binary="INSTANCE 2022 labels mark any hemorrhage (0/1)"),
}

# nnU-Net label names -> contract codes. A name is compared lower-cased with everything but
# letters and digits dropped and a trailing "hemorrhage"/"hematoma"/... removed, so
# "Epidural_Hemorrhage", "epidural haematoma" and "EDH" all read as epidural.
SUBTYPE_NAMES: dict[str, int] = {
    "epidural": 1, "extradural": 1, "edh": 1,
    "intraparenchymal": 2, "intracerebral": 2, "parenchymal": 2, "iph": 2, "ich": 2,
    "intraventricular": 3, "ventricular": 3, "ivh": 3,
    "subarachnoid": 4, "sah": 4,
    "subdural": 5, "sdh": 5,
}
_NAME_SUFFIXES = ("haemorrhage", "hemorrhage", "haematoma", "hematoma", "hemorrhagic",
                  "bleeding", "bleed", "blood", "hem")
# "ICH" names a subtype (intracerebral) only beside other subtypes; alone it is the usual name
# of an any-hemorrhage class (INSTANCE 2022 says "ICH" for every bleed).
_AMBIGUOUS_ALONE = "ich"
NNUNET_JSON = "dataset.json"


def _name_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for suffix in _NAME_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return key


def _json_labels(path: Path) -> dict[str, int]:
    """dataset.json's "labels" as {name: value}; nnU-Net v1's {"1": "name"} is turned around.

    Region entries (nnU-Net v2's lists of values) are unions of the plain labels and skipped."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))["labels"]
        if all(isinstance(k, str) and k.strip().isdigit() for k in labels) and \
                all(isinstance(v, str) for v in labels.values()):
            labels = {name: int(value) for value, name in labels.items()}
        return {str(name): int(value) for name, value in labels.items()
                if not isinstance(value, list)}
    except OSError as exc:
        raise UsageError(f"{path} cannot be read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f'{path} has no "labels" table of names and whole numbers '
                         f'(nnU-Net\'s {{"background": 0, "<name>": 1, ...}})') from None


def nnunet_label_mapping(folder: Path) -> LabelMapping:
    """The mapping an nnU-Net raw folder's dataset.json gives by its label names.

    Names of the five subtypes (SUBTYPE_NAMES, any case and common spellings) become their
    contract codes; any other name makes the dataset binary (any value > 0 is blood) and is
    named in `why_binary`, so subtype training is refused saying which name was not understood.
    """
    path = folder / NNUNET_JSON
    if not path.is_file():
        return LabelMapping(None, binary=True, description="no dataset.json: any value > 0 is "
                            "hemorrhage", why_binary=f"{folder} has no {NNUNET_JSON} naming its "
                            "labels")
    labels = _json_labels(path)
    if "ignore" in labels:
        # nnU-Net v2's sparse annotation: voxels nobody labelled. Read as a class they would
        # train as blood or as background; both are wrong, and the loss has no mask for them.
        raise UsageError(f'{path} has an "ignore" label (value {labels["ignore"]}: unannotated '
                         f"voxels, nnU-Net v2's sparse annotation), which ichseg cannot train "
                         f"or evaluate on; give fully annotated label maps")
    foreground = {name: value for name, value in labels.items() if value != 0}
    if any(value < 0 or value > 255 for value in labels.values()):
        raise UsageError(f"{path} gives a label value outside 0-255")
    allowed = tuple(sorted({0, *labels.values()}))
    known = {name: SUBTYPE_NAMES.get(_name_key(name)) for name in foreground}
    unknown = [name for name, code in known.items() if code is None]
    if [_name_key(name) for name in foreground] == [_AMBIGUOUS_ALONE]:
        unknown = list(foreground)
    if unknown or not foreground:
        listed = ", ".join(f"{labels[n]} {n!r}" for n in unknown)
        why = (f"{path} names label {listed}, which is none of the five subtypes (epidural, "
               f"intraparenchymal, intraventricular, subarachnoid, subdural)" if unknown else
               f"{path} names no hemorrhage label")
        return LabelMapping(allowed, binary=True, why_binary=why,
                            description=f"{NNUNET_JSON} labels {listed or 'none'}: any value > 0 "
                                        "is hemorrhage")
    table = [0] * (max(allowed) + 1)
    for name, value in foreground.items():
        table[value] = known[name]
    described = ", ".join(f"{value} {name} -> {CODES[known[name]]}"
                          for name, value in sorted(foreground.items(), key=lambda kv: kv[1]))
    return LabelMapping(allowed, binary=False, codes=tuple(table),
                        description=f"{NNUNET_JSON}: {described}")


@dataclass(frozen=True)
class _Spec:
    image_dir: str
    label_dirs: tuple[str, ...]


# Checked in this order at each folder; no two share both an image and a label folder name.
_SPECS: dict[str, _Spec] = {
    "nnunet": _Spec("imagesTr", ("labelsTr",)),
    "physionet": _Spec("ct_scans", ("masks",)),
    "bhsd": _Spec("images", ("ground truths", "ground_truths")),
    "generic": _Spec("images", ("labels",)),
    "instance": _Spec("data", ("label",)),
}
LAYOUTS = tuple(LABEL_MAPPINGS)


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None = None


@dataclass
class DatasetIndex:
    """The cases of one dataset. `extras` holds layout-specific metadata (PhysioNet's per-slice
    subtype flags); `problems` the unpaired or misnamed files, one sentence each."""

    layout: str
    root: Path
    cases: list[Case]
    extras: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # How the label files' values become contract codes: inspect, the cache, training and
    # evaluate all take it from here, so they read every layout alike.
    label_mapping: LabelMapping | None = None

    def __post_init__(self) -> None:
        if self.label_mapping is None:
            self.label_mapping = LABEL_MAPPINGS[self.layout]


def _describe(layout: str) -> str:
    spec = _SPECS[layout]
    labels = " or ".join(f"{d}/" for d in spec.label_dirs)
    return f"{layout} ({spec.image_dir}/ + {labels})"


def _matches(folder: Path, layout: str) -> Path | None:
    """The label folder when `folder` holds `layout`'s image and label folders, else None."""
    spec = _SPECS[layout]
    if not (folder / spec.image_dir).is_dir():
        return None
    return next((folder / d for d in spec.label_dirs if (folder / d).is_dir()), None)


def _subfolders(folder: Path) -> list[Path]:
    # __MACOSX: the resource-fork shadow tree of a zip made on a Mac repeats the dataset's folders.
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def _locate(root: Path, layouts: tuple[str, ...]) -> tuple[str, Path]:
    """(layout, dataset folder): `root` itself, else the one folder one or two levels below."""
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} does not exist or is not a folder")
    level = [root]
    for _depth in range(3):
        found = [(layout, folder) for folder in level for layout in layouts
                 if _matches(folder, layout)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{folder} ({layout})" for layout, folder in found)
            raise UsageError(f"{root} holds several datasets: {listed}; pass one of them")
        level = [sub for folder in level for sub in _subfolders(folder)]
    looked_for = "; ".join(_describe(layout) for layout in layouts)
    if not any(root.iterdir()):
        raise UsageError(f"dataset folder {root} is empty; expected one of: {looked_for}")
    raise UsageError(f"no dataset layout recognised in {root}; looked for: {looked_for}")


def detect_layout(root: str | Path) -> str:
    """The name of the layout found in `root` (or one or two levels below it)."""
    return _locate(Path(root), LAYOUTS)[0]


def _image_case_id(path: Path, layout: str) -> tuple[str | None, str | None]:
    """(case id, None) for an image file, or (None, problem) when its name does not fit."""
    stem = nifti_stem(path.name)
    if layout != "nnunet":
        return stem, None
    if stem.endswith(NNUNET_CHANNEL_SUFFIX) and len(stem) > len(NNUNET_CHANNEL_SUFFIX):
        return stem[: -len(NNUNET_CHANNEL_SUFFIX)], None
    if re.search(r"_\d{4}$", stem):
        return None, (f"image {path} is a further input channel; ichseg reads one CT channel "
                      f"(<case>_0000)")
    return None, f"image {path} is not named <case>_0000.nii.gz as nnU-Net's imagesTr needs"


def _by_case(files: list[tuple[str, Path]], problems: list[str]) -> dict[str, Path]:
    """case id -> file, reporting a case id given by two files (e.g. `a.nii` and `a.nii.gz`)."""
    table: dict[str, Path] = {}
    for case_id, path in files:
        if case_id in table:
            problems.append(f"{path} and {table[case_id].name} are both case {case_id!r}")
        else:
            table[case_id] = path
    return table


def _read_physionet_csv(path: Path, case_ids: list[str]) -> dict[str, dict[int, dict[str, int]]]:
    """Per-slice flags from PhysioNet's CSV: {case id: {slice number (1-based): {flag: 0/1}}}.

    The CSV numbers patients without zero padding (49) while the files do (049.nii). Rows of
    patients without a scan are skipped: the CSV lists 82 patients, NIfTI exists for 75.
    """
    by_number = {int(c): c for c in case_ids if c.isdigit()}
    slices: dict[str, dict[int, dict[str, int]]] = {}
    # utf-8-sig: the file may start with a byte-order mark, which would glue onto the first name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("PatientNumber", "SliceNumber") if c not in columns]
        if missing:
            raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}")
        flags = [c for c in _PHYSIONET_FLAGS if c in columns]
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            try:
                case_id = by_number.get(int(row["PatientNumber"]))
                slice_number = int(row["SliceNumber"])
                values = {flag: int(float(row[flag])) for flag in flags if row.get(flag)}
            except ValueError:
                raise UsageError(f"{path} line {line} holds a value that is not a number") \
                    from None
            if case_id is not None:
                slices.setdefault(case_id, {})[slice_number] = values
    return slices


def find_cases(root: str | Path, layout: str = "auto", strict: bool = True) -> DatasetIndex:
    """The cases of the dataset in `root`, each image paired with its label by case id.

    An image without a label or a label without an image is a problem: `strict` raises the first
    as UsageError (what training needs); otherwise they are listed in `problems` (what `inspect`
    reports). A folder holding no dataset at all always raises.
    """
    root = Path(root)
    if layout != "auto" and layout not in _SPECS:
        raise UsageError(f"unknown layout {layout!r}; allowed: auto, {', '.join(LAYOUTS)}")
    layout, folder = _locate(root, LAYOUTS if layout == "auto" else (layout,))
    image_dir = folder / _SPECS[layout].image_dir
    label_dir = _matches(folder, layout)
    assert label_dir is not None  # _locate found it

    problems: list[str] = []
    image_files = nifti_files(image_dir)
    if not image_files:
        raise UsageError(f"image folder {image_dir} holds no NIfTI files (.nii, .nii.gz)")
    named = []
    for path in image_files:
        case_id, problem = _image_case_id(path, layout)
        if problem:
            problems.append(problem)
        else:
            named.append((case_id, path))
    images = _by_case(named, problems)
    labels = _by_case([(nifti_stem(p.name), p) for p in nifti_files(label_dir)], problems)

    cases = []
    for case_id, image in images.items():
        if case_id in labels:
            cases.append(Case(case_id, image, labels[case_id]))
        else:
            problems.append(f"image {image} has no label {case_id}.nii[.gz] in {label_dir}")
    problems.extend(f"label {label} has no image in {image_dir}"
                    for case_id, label in labels.items() if case_id not in images)

    extras: dict[str, Any] = {}
    mapping = nnunet_label_mapping(folder) if layout == "nnunet" else None
    if layout == "physionet":
        csv_path = next((p for p in folder.iterdir()
                         if p.name.lower() == PHYSIONET_CSV.lower() and p.is_file()), None)
        if csv_path is not None:
            extras["slice_flags"] = _read_physionet_csv(csv_path, [c.case_id for c in cases])
            extras["slice_flags_file"] = str(csv_path)

    if strict and problems:
        raise UsageError(problems[0])
    return DatasetIndex(layout, folder, cases, extras, problems, mapping)


def label_folder_mapping(folder: str | Path) -> tuple[str | None, LabelMapping]:
    """(layout, mapping) of a folder of label files: its dataset's when it is a layout's label
    folder (PhysioNet's masks/, an nnU-Net labelsTr/ beside its dataset.json...), else (None,
    the contract's codes as they are). `evaluate` reads ground truth through it, as training
    does."""
    folder = Path(folder).resolve()
    for layout, spec in _SPECS.items():
        if folder.name in spec.label_dirs and _matches(folder.parent, layout) == folder:
            if layout == "nnunet":
                return layout, nnunet_label_mapping(folder.parent)
            return layout, LABEL_MAPPINGS[layout]
    return None, LABEL_MAPPINGS["generic"]
