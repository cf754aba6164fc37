"""DICOM SEG: the predicted label map as a DICOM Segmentation over the series it was read from.

A radiologist's viewer (OHIF, 3D Slicer, a PACS) opens DICOM, not NIfTI: a SEG object that
references the source instances is overlaid on the original series. One SEG per predicted
series, written with highdicom, one segment per class the model predicts (BINARY, one frame per
source slice and segment that holds any of it), each with SNOMED CT codes:

| class | segmented property type (SCT) | anatomic region (SCT) |
|---|---|---|
| hemorrhage (binary model) | 1386000 Intracranial hemorrhage | - |
| EDH | 82999001 Epidural intracranial hemorrhage | - |
| IPH | 274100004 Cerebral hemorrhage | - |
| IVH | 50960005 Hemorrhage | 35764002 Brain ventricle |
| SAH | 21454007 Subarachnoid intracranial hemorrhage | - |
| SDH | 35486000 Subdural intracranial hemorrhage | - |

All in the category 49755003 Morphologically abnormal structure. Where pydicom's dictionary
(DICOM PS3.16's code tables) holds a concept it is taken from there (`codes.SCT`): 1386000
(by name only: no context group lists it), 50960005 (CID 7151 Segmentation Property Types and
7159 Lesion Segmentation Types), 35764002 (CIDs 7151, 7153, 7192) and 49755003 (CID 7150). The
four disorder codes are not in it, nor in highdicom, and no SNOMED CT browser could be reached:
they were checked against public terminology data, 21454007 and 274100004 in a FHIR stroke
implementation guide's SNOMED CT value sets, 82999001 and 35486000 in OHDSI Athena's
concept names (Epidural intracranial hemorrhage, Subdural hemorrhage). For intraventricular
hemorrhage public code gives two different concept ids and neither could be confirmed, so IVH
is the morphology with its site, as DICOM allows (docs/DOMAIN.md).

The labels are carried back onto the acquired slices: every pixel of every source instance is
placed in the patient's space (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) and
takes the label of the nearest voxel of the label map (outside the map: background). So a
series with uneven gaps or gantry tilt, predicted on a regular grid, still gets one frame per
slice the scanner acquired, matching what the label map says at that place. An Enhanced CT
source is one object of many frames: each frame is placed by its functional groups
(`data.dicom.frame_planes`), and the SEG references the object and, per frame, its frame number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ichseg.data.dicom import dicom_files, frame_planes
from ichseg.fileio import atomic_path


def _ichseg_version() -> str:
    # From the installed metadata, not `ichseg.__version__`: the package root is the API's
    # entry point, and importing it from here would close an import cycle.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ichseg")
    except PackageNotFoundError:
        return "unknown"

# DICOM's patient space is LPS, the affines are RAS.
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
MANUFACTURER = "ichseg"
SERIES_NUMBER = 9016


def segment_codes() -> dict[str, tuple]:
    """Class name -> (property type, anatomic region or None) as highdicom codes."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "hemorrhage": (codes.SCT.IntracranialHemorrhage, None),
        "EDH": (Code("82999001", "SCT", "Epidural intracranial hemorrhage"), None),
        "IPH": (Code("274100004", "SCT", "Cerebral hemorrhage"), None),
        "IVH": (codes.SCT.Hemorrhage, codes.SCT.BrainVentricle),
        "SAH": (Code("21454007", "SCT", "Subarachnoid intracranial hemorrhage"), None),
        "SDH": (Code("35486000", "SCT", "Subdural intracranial hemorrhage"), None),
    }


def labels_on_slice(labels: np.ndarray, affine: np.ndarray, dataset) -> np.ndarray:
    """The label map's values (rows, columns) at each pixel centre of one DICOM image, nearest
    voxel; 0 where the pixel lies outside the map."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    orientation = np.array(dataset.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    origin = np.array(dataset.ImagePositionPatient, float) * _LPS_TO_RAS
    # Along a row (the column index grows) the position moves by the row direction cosine
    # times the spacing between columns; down a column by the column cosine times the row spacing.
    along_row = orientation[:3] * _LPS_TO_RAS * column_spacing
    down_column = orientation[3:] * _LPS_TO_RAS * row_spacing
    to_voxel = np.linalg.inv(np.asarray(affine, float))
    base = to_voxel[:3, :3] @ origin + to_voxel[:3, 3]
    step_c, step_r = to_voxel[:3, :3] @ along_row, to_voxel[:3, :3] @ down_column
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    ijk = np.rint(base + r[..., None] * step_r + c[..., None] * step_c).astype(np.intp)
    inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape)), axis=-1)
    result = np.zeros((rows, columns), dtype=np.uint8)
    hits = ijk[inside]
    result[inside] = labels[hits[:, 0], hits[:, 1], hits[:, 2]]
    return result


def dicom_source(case_input) -> Path | list[Path] | None:
    """What a predict input's SEG is written over: the files of a DICOM series object (one with
    `files`, as a study is split into series), a series folder, or None (a NIfTI file)."""
    files = getattr(case_input, "files", None)
    if files:
        return list(files)
    return case_input if isinstance(case_input, Path) and case_input.is_dir() else None


def series_datasets(series: str | Path | Sequence[Path]) -> list:
    """The image instances (headers only) of a series: its files, or a series folder's DICOM
    files as read_dicom_series takes them (every DICOM image file directly inside it)."""
    import pydicom

    files = dicom_files(Path(series)) if isinstance(series, (str, Path)) else list(series)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    return [ds for ds in datasets if "Rows" in ds]


def write_dicom_seg(series: str | Path | Sequence[Path], labels: np.ndarray, affine: np.ndarray,
                    class_names: Mapping[int, str], out_path: str | Path) -> Path:
    """Write the SEG of `labels` (on the grid of `affine`, RAS) over a DICOM series (its
    folder, or its files), atomically, to `out_path`; return it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sources = series_datasets(series)
    # One frame per source slice, in the order highdicom takes them: the files, or the frames of
    # a multi-frame source.
    frames = np.stack([labels_on_slice(labels, affine, plane)
                       for ds in sources for plane in frame_planes(ds)])
    known = segment_codes()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ichseg nnMamba U-Net", version=_ichseg_version(),
        family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    # The segment number of a class is its label code (1, or 1-5 for the subtypes).
    for code, name in sorted(class_names.items()):
        property_type, region = known[name]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=code, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[region] if region is not None else None))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        # Frames without any segment are left out, unless all are (nothing predicted): then
        # highdicom keeps them all anyway, and says so in a warning this avoids.
        omit_empty_frames=bool(frames.any()),
        manufacturer=MANUFACTURER, manufacturer_model_name="ichseg",
        software_versions=_ichseg_version(), device_serial_number="0",
        series_description="ichseg hemorrhage segmentation")
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return Path(out_path)
