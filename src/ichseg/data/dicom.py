"""DICOM as hospitals export it: series found by their headers, converted by dcm2niix.

A folder is searched recursively for DICOM files (the `DICM` marker); their headers are read
with pydicom (`stop_before_pixels`) and grouped by SeriesInstanceUID. Each series is then
- predicted: an axial CT volume (modality CT, one grey value per pixel, at least
  `MIN_VOLUME_SLICES` slices, slice normal within 45 degrees of the patient's head-foot axis),
  either classic (a file per slice) or one multi-frame Enhanced CT or Legacy Converted Enhanced
  CT object (a frame per slice, placed by its shared and per-frame functional groups: each frame
  is handled as the slice a classic series would hold, `frame_planes`);
- skipped, with a one-line note: objects without pixels (dose reports and other structured
  reports, presentation states), secondary captures by SOP class (screenshots, dose screens),
  localizers (ImageType LOCALIZER), and CT series of a single slice or not axial (scouts,
  reformats);
- refused (`UsageError`, naming it): another modality (MR...), a colour (RGB) image, a series too
  short to be a volume, one whose slices cannot be stacked (mixed orientations or sizes, a
  repeated position), a multi-frame object other than one Enhanced CT object, or one larger than
  `data.max_voxels` (from its headers, before any pixel is decoded).

The pixels are converted by dcm2niix (its PyPI wheel ships the binary), the converter most of
the field runs: it decodes every compressed transfer syntax (JPEG 2000, JPEG lossless, JPEG-LS,
RLE) and Enhanced CT (its frames in spatial order and its in-plane axes exactly as it gives a
classic series', checked on converted copies), and where the slices are unevenly spaced (a
missing slice, 4 mm then 7 mm) or the gantry is tilted it writes the series on a regular grid
covering it where the scanner put it (its `_Eq` and `_Tilt` conversions), which is the grid
predicted and written. Those cases are warned about.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ichseg.config import DataConfig
from ichseg.data.io import Volume, hu_warning, is_nifti_name, read_nifti, refuse_oversized
from ichseg.errors import UsageError

# Fewer slices than this are no head CT volume (a scout has one, a dose screen one or two).
MIN_VOLUME_SLICES = 3
# A slice normal closer than this to the head-foot axis (|cos| of the angle) is axial; a gantry
# tilt of up to 30 degrees stays well inside, a coronal or sagittal reformat well outside.
AXIAL_COSINE = np.cos(np.deg2rad(45.0))
# Slice steps that differ by more than this share of the mean (or 1 micrometre) are uneven, and a
# stacking direction this far from the slice normal (degrees) is a gantry tilt.
GAP_TOLERANCE = 0.01
TILT_TOLERANCE_DEG = 0.5

# SOP classes by UID prefix. Secondary captures (single- and multi-frame) are screenshots and
# dose screens; structured reports (the CT dose report among them), presentation states, key
# object selections and encapsulated documents hold no image.
SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7",)
NO_IMAGE = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
            "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.481.")
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: the export's index, not a series
# Multi-frame CT objects that hold a volume, a frame per slice: Enhanced CT Image Storage, and the
# Legacy Converted Enhanced CT Image Storage that archives make of classic series.
ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
# What a frame's functional groups say about it, by the classic header keyword each fills in.
_FRAME_GROUPS = {"PlanePositionSequence": ("ImagePositionPatient",),
                 "PlaneOrientationSequence": ("ImageOrientationPatient",),
                 "PixelMeasuresSequence": ("PixelSpacing",),
                 "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope")}

# dcm2niix's names for the regular-grid copies it writes beside a sheared or uneven conversion.
_CORRECTED_SUFFIXES = ("_Tilt_Eq_1", "_Tilt_1", "_Eq_1")
# DICOM is LPS (x to the patient's left, y to the back); NIfTI is RAS: negate the first two axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CONVERTED = "series"


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: the `DICM` marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files in `folder` and every folder below it, sorted; hidden ones skipped (a
    DICOM file given itself: that file)."""
    if folder.is_file():
        return [folder] if is_dicom_file(folder) else []
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files)
                     if not name.startswith(".") and is_dicom_file(Path(root) / name))
    return found


def frame_count(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_planes(ds) -> list:
    """One header per frame of a DICOM image, as a classic single-slice file would hold it: for
    a multi-frame object, its top-level attributes overlaid with the frame's shared and then
    per-frame functional groups (position, orientation, pixel spacing, rescale); for a
    single-frame image, the image itself."""
    if frame_count(ds) == 1:
        return [ds]
    from pydicom import Dataset

    shared = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frame_count(ds):
        raise UsageError(f"the multi-frame DICOM image {ds.filename} has {len(per_frame)} "
                         f"per-frame functional groups for its {frame_count(ds)} frames")
    planes = []
    for frame in per_frame:
        plane = Dataset()
        for keyword in ("Rows", "Columns", "BitsStored", "PixelRepresentation",
                        *(k for keys in _FRAME_GROUPS.values() for k in keys)):
            if keyword in ds:
                setattr(plane, keyword, ds[keyword].value)
        for groups in (shared[0], frame):  # a per-frame value overrides the shared one
            for sequence, keywords in _FRAME_GROUPS.items():
                for item in groups.get(sequence) or []:
                    for keyword in keywords:
                        if keyword in item:
                            setattr(plane, keyword, item[keyword].value)
        planes.append(plane)
    return planes


@dataclass
class DicomSeries:
    """The files of one SeriesInstanceUID and their headers (no pixels), in file-name order."""

    uid: str
    files: list[Path] = field(default_factory=list)
    headers: list = field(default_factory=list)

    @property
    def first(self):
        return self.headers[0]

    @property
    def number(self) -> int | None:
        value = self.first.get("SeriesNumber")
        return int(value) if value not in (None, "") else None

    @property
    def folder(self) -> Path:
        """The deepest folder holding all its files."""
        return Path(os.path.commonpath([str(p.parent) for p in self.files]))

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "")).upper()

    @property
    def multi_frame(self) -> bool:
        return any(frame_count(ds) > 1 for ds in self.headers)

    @cached_property
    def slices(self) -> list[tuple[str, object]]:
        """(what to call it, its header) for every slice: a classic series' files, or the
        frames of a multi-frame object (`frame_planes`), in file and frame order."""
        return [(f"DICOM file {path}" if frame_count(ds) == 1
                 else f"frame {k + 1} of DICOM file {path}", plane)
                for path, ds in zip(self.files, self.headers, strict=True)
                for k, plane in enumerate(frame_planes(ds))]

    def __str__(self) -> str:
        number = "?" if self.number is None else self.number
        description = str(self.first.get("SeriesDescription", "")).strip()
        label = f" {description!r}" if description else ""
        files = f"{len(self.files)} files"
        if self.multi_frame:
            files = f"{len(self.files)} file{'s' * (len(self.files) > 1)}, " \
                    f"{sum(frame_count(ds) for ds in self.headers)} frames"
        return f"series {number}{label} in {self.folder} ({files})"


def find_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series under `folder` (recursively), grouped by SeriesInstanceUID, ordered by
    series number; DICOMDIR index files are left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    by_uid: dict[str, DicomSeries] = {}
    for path in dicom_files(Path(folder)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise UsageError(f"{path} is not a readable DICOM file ({exc})") from None
        if str(ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID", ""))) \
                == MEDIA_DIRECTORY:
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID) {path.parent}"
        series = by_uid.setdefault(uid, DicomSeries(uid))
        series.files.append(path)
        series.headers.append(ds)
    return sorted(by_uid.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))


def _sop_class(ds) -> str:
    return str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))


def skip_reason(series: DicomSeries) -> str | None:
    """Why `series` is not predicted (a localizer, a screenshot, no image...), or None when it
    is an axial CT volume. Raises UsageError for what must not be skipped silently: another
    modality, a colour image, a series too short to be a volume."""
    sop = _sop_class(series.first)
    if sop.startswith(NO_IMAGE) or not all("Rows" in ds for ds in series.headers):
        return "no image (a dose or structured report, or another non-image object)"
    if sop.startswith(SECONDARY_CAPTURE):
        return "a secondary capture (a screenshot or dose screen, not a scan)"
    image_types = {str(v).upper() for ds in series.headers for v in ds.get("ImageType", [])}
    if "LOCALIZER" in image_types:
        return "a localizer (scout)"
    if series.modality != "CT":
        raise UsageError(f"{series} is {series.modality or 'of no modality'}, not CT: ichseg "
                         f"segments CT in Hounsfield units only")
    if int(series.first.get("SamplesPerPixel", 1)) != 1 or not str(
            series.first.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONO"):
        raise UsageError(f"{series} is a colour ({series.first.PhotometricInterpretation}) "
                         f"image, not CT in Hounsfield units")
    if series.multi_frame and (len(series.files) > 1 or sop not in ENHANCED_CT):
        path = next(p for p, ds in zip(series.files, series.headers, strict=True)
                    if frame_count(ds) > 1)
        raise UsageError(f"DICOM file {path} is a multi-frame image but {series} is not one "
                         f"Enhanced CT object; ichseg reads series of single-slice CT files and "
                         f"Enhanced (or Legacy Converted Enhanced) CT objects")
    if len(series.slices) == 1:
        return "a single slice (a scout or a key image, not a volume)"
    if not _is_axial(series):
        return "not axial (a scout or a coronal or sagittal reformat)"
    if len(series.slices) < MIN_VOLUME_SLICES:
        raise UsageError(f"{series} has {len(series.slices)} slices, too few to be a head CT "
                         f"volume (at least {MIN_VOLUME_SLICES})")
    return None


def _orientation(series: DicomSeries) -> np.ndarray:
    for name, ds in series.slices:
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                raise UsageError(f"{name} has no {key}, so its slice cannot be placed")
    orientation = np.array(series.slices[0][1].ImageOrientationPatient, dtype=np.float64)
    for name, ds in series.slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orientation,
                           atol=1e-4):
            raise UsageError(f"{name} is oriented differently from the rest of {series}")
    return orientation


def _is_axial(series: DicomSeries) -> bool:
    orientation = _orientation(series)
    normal = np.cross(orientation[:3], orientation[3:])
    return abs(normal[2]) / np.linalg.norm(normal) >= AXIAL_COSINE


@dataclass
class SliceGeometry:
    """Where the slices of a series lie: sorted along the slice normal."""

    normal: np.ndarray
    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm, sorted
    steps: np.ndarray  # distances between neighbours along the normal, mm

    @property
    def uneven(self) -> bool:
        return bool(self.steps.max() - self.steps.min()
                    > GAP_TOLERANCE * self.steps.mean() + 1e-3)

    @property
    def grid_slices(self) -> int:
        """Slices of the regular grid that covers the stack (`regular_grid`): its own, or where
        the gaps are uneven, evenly spaced from the first to the last at most the smallest gap
        apart (as dcm2niix's `_Eq` copy)."""
        if not self.uneven:
            return len(self.positions)
        return int(np.ceil(self.steps.sum() / self.steps.min() - 1e-3)) + 1

    @property
    def tilt_deg(self) -> float:
        """Angle between the stacking direction and the slice normal (a gantry tilt)."""
        span = self.positions[-1] - self.positions[0]
        cosine = abs(span @ self.normal) / max(np.linalg.norm(span), 1e-9)
        return float(np.degrees(np.arccos(min(cosine, 1.0))))


def slice_geometry(series: DicomSeries) -> SliceGeometry:
    """The slices' positions along the normal; refuses a series that cannot be stacked."""
    orientation = _orientation(series)
    rows, columns = int(series.first.Rows), int(series.first.Columns)
    for path, ds in zip(series.files, series.headers, strict=True):
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise UsageError(f"DICOM file {path} is {ds.Rows} x {ds.Columns} pixels, unlike the "
                             f"{rows} x {columns} of the rest of {series}")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient]
                          for _, ds in series.slices])
    order = np.argsort(positions @ normal, kind="stable")
    steps = np.diff(positions[order] @ normal)
    if steps.size and steps.min() < 1e-3:
        i = int(np.argmin(steps))
        if series.multi_frame:
            first, second = (series.slices[order[k]][0] for k in (i, i + 1))
            raise UsageError(f"{first} and {second} lie at the same position; the object "
                             f"holds a repeated slice")
        first, second = (series.files[order[k]].name for k in (i, i + 1))
        raise UsageError(f"DICOM files {first} and {second} of {series} lie at the same "
                         f"position; the series holds a repeated slice")
    return SliceGeometry(normal, positions[order], steps)


def read_series(series: DicomSeries, max_voxels: int = DataConfig.max_voxels) -> Volume:
    """One axial CT series as a HU volume on a regular grid, RAS affine: dcm2niix's conversion,
    regridded by `regular_grid` where the gantry is tilted or the slice gaps are uneven.
    Refuses, before converting, a series of more than `max_voxels` voxels (`data.max_voxels`),
    counting the slices of the regular grid its uneven gaps need (a stray slice 0.01 mm from the
    next would ask for thousands)."""
    geometry = slice_geometry(series)
    regridded = geometry.grid_slices != len(series.slices)
    refuse_oversized(f"{series}, on the regular grid its uneven gaps need," if regridded
                     else series, (int(series.first.Columns), int(series.first.Rows),
                                   geometry.grid_slices), max_voxels)
    corrections = []
    if geometry.tilt_deg > TILT_TOLERANCE_DEG:
        corrections.append(f"a gantry tilt of {geometry.tilt_deg:.1f} degrees")
    if geometry.uneven:
        corrections.append(f"uneven slice gaps ({geometry.steps.min():.3g} to "
                           f"{geometry.steps.max():.3g} mm, missing slices?)")
    with tempfile.TemporaryDirectory(prefix="ichseg-dicom-") as work:
        image = nib.load(_convert(series, Path(work)), mmap=False)
        array = np.asarray(image.dataobj, dtype=np.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
        header = image.header.copy()
    if array.ndim != 3 or array.shape[2] != len(series.slices):
        raise UsageError(f"dcm2niix converted {series} to shape {array.shape}, not one volume "
                         f"of its {len(series.slices)} slices")
    array = _rsna_corrected(array, series.slices[0][1])
    if corrections:
        array, affine = regular_grid(array, affine, geometry)
        header = None  # a new grid: both forms are written from its (orthogonal) affine
        spacing = ", ".join(f"{s:.3g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
        warnings.warn(f"{series} has {' and '.join(corrections)}: predicted on a regular grid "
                      f"of {array.shape[2]} slices ({spacing} mm) covering it where the scanner "
                      f"put it", UserWarning, stacklevel=2)
    else:
        _check_forms(header, series)
    volume = Volume(array, affine, series.folder, header)
    message = hu_warning(volume)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    return volume


def regular_grid(stack: np.ndarray, affine: np.ndarray, geometry: SliceGeometry,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A tilted or unevenly spaced stack of slices on a regular, orthogonal grid covering it.

    `stack` is dcm2niix's plain conversion (the slices in spatial order, its in-plane axes and
    first slice placed exactly; a sheared or uneven stack has no exact affine) and `geometry`
    where the headers put every slice. The grid keeps the in-plane axes and spacing, is widened
    to hold every slice's pixels (a tilted stack's slices are shifted in-plane), and steps
    along the slice normal evenly from the first slice to the last, at most the smallest gap
    apart (as dcm2niix's `_Eq` copy does). A voxel interpolates linearly within its two
    neighbouring slices and between them along the normal, so each slice lands where the
    scanner put it. (dcm2niix's own de-tilted copy misplaces negatively tilted series by
    millimetres: see BENCHMARKS.md.)
    """
    lps = _LPS_TO_RAS @ affine  # the same flip turns RAS into LPS
    step_u, step_v, corner = lps[:3, 0], lps[:3, 1], lps[:3, 3]
    # dcm2niix stacks the slices along the normal one way or the other: the corner of its first
    # slice lies in the plane of the lowest or of the highest.
    positions, normal = geometry.positions, geometry.normal
    if abs((corner - positions[-1]) @ normal) < abs((corner - positions[0]) @ normal):
        positions = positions[::-1]
    origins = positions + (corner - positions[0])  # where voxel (0, 0, k) of each slice lies
    axis = normal * np.sign((origins[-1] - origins[0]) @ normal)
    depth = (origins - origins[0]) @ axis
    shift_u = (origins - origins[0]) @ step_u / (step_u @ step_u)
    shift_v = (origins - origins[0]) @ step_v / (step_v @ step_v)
    low_u = np.floor(min(0.0, shift_u.min()) + 1e-6)
    low_v = np.floor(min(0.0, shift_v.min()) + 1e-6)
    size_u = int(np.ceil(max(0.0, shift_u.max()) - 1e-6 - low_u)) + stack.shape[0]
    size_v = int(np.ceil(max(0.0, shift_v.max()) - 1e-6 - low_v)) + stack.shape[1]
    count = geometry.grid_slices
    step = depth[-1] / (count - 1)
    fill = float(stack.min())
    out = np.empty((size_u, size_v, count), dtype=np.float32)
    for m in range(count):
        k = int(np.clip(np.searchsorted(depth, m * step + 1e-6) - 1, 0, len(depth) - 2))
        weight = float(np.clip((m * step - depth[k]) / (depth[k + 1] - depth[k]), 0.0, 1.0))
        out[:, :, m] = 0.0
        for j, w in ((k, 1.0 - weight), (k + 1, weight)):
            if w > 0:
                out[:, :, m] += w * ndimage.affine_transform(
                    stack[:, :, j], np.eye(2), offset=(low_u - shift_u[j], low_v - shift_v[j]),
                    output_shape=(size_u, size_v), order=1, cval=fill)
    grid = np.eye(4)
    grid[:3, 0], grid[:3, 1], grid[:3, 2] = step_u, step_v, axis * step
    grid[:3, 3] = origins[0] + low_u * step_u + low_v * step_v
    return out, _LPS_TO_RAS @ grid


def _convert(series: DicomSeries, work: Path) -> Path:
    """Run dcm2niix on the series' files alone (linked into `work`); the plain NIfTI it wrote
    (not its regular-grid copies of a tilted or uneven series: `regular_grid` makes those)."""
    import dcm2niix

    source, out = work / "in", work / "out"
    source.mkdir()
    out.mkdir()
    for k, path in enumerate(series.files):
        try:
            os.symlink(path.resolve(), source / f"{k:05d}.dcm")
        except OSError:  # a file system without links
            shutil.copyfile(path, source / f"{k:05d}.dcm")
    # -g i: ignore a user's defaults file; -m y: one volume per series whatever its acquisition
    # numbers; -l n: unsigned 16-bit pixels stored as signed (dcm2niix equalises slice gaps of
    # signed integers only); -b n: no JSON sidecar (pydicom reads the headers); -z n: no gzip.
    command = [dcm2niix.bin, "-g", "i", "-m", "y", "-l", "n", "-b", "n", "-z", "n", "-d", "0",
               "-f", _CONVERTED, "-o", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    written = sorted(out.glob("*.nii"))
    if result.returncode != 0 or not written:
        said = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith(("Error", "Warning", "Unsupported"))]
        raise UsageError(f"dcm2niix could not convert {series}: "
                         f"{'; '.join(said[-3:]) or f'exit code {result.returncode}'}")
    names = [path.name[: -len(".nii")] for path in written]
    volumes = [name for name in names
               if name == _CONVERTED or not name.endswith(_CORRECTED_SUFFIXES)]
    if volumes != [_CONVERTED]:
        raise UsageError(f"dcm2niix split {series} into {len(volumes)} volumes "
                         f"({', '.join(volumes)}); ichseg predicts one volume per series")
    return out / f"{_CONVERTED}.nii"


def _check_forms(header: nib.Nifti1Header, series: DicomSeries) -> None:
    """dcm2niix's corrected grids are orthogonal, so their sform and qform agree; say so if
    they ever do not (the sform, which is what nibabel reads, is used)."""
    if int(header["sform_code"]) > 0 and int(header["qform_code"]) > 0 and not np.allclose(
            header.get_sform(), header.get_qform(), atol=1e-3):
        warnings.warn(f"the conversion of {series} has a qform that differs from its sform; "
                      f"the sform is used", UserWarning, stacklevel=3)


def _rsna_corrected(hu: np.ndarray, ds) -> np.ndarray:
    """HU with the RSNA 2019 12-bit quirk undone, for a CT header that has it.

    Some RSNA scans store 12-bit unsigned values with an intercept near 0 although the pixels
    were written as if offset by -1000: shift the stored values by 1000, wrap at 4096, and use
    intercept -1000.
    """
    intercept = float(ds.get("RescaleIntercept", 0.0))
    if not (int(ds.get("BitsStored", 16)) == 12 and int(ds.get("PixelRepresentation", 0)) == 0
            and intercept > -100):
        return hu
    slope = float(ds.get("RescaleSlope", 1.0))
    shifted = np.rint((hu - intercept) / slope) + 1000
    shifted[shifted >= 4096] -= 4096
    return (shifted * slope - 1000.0).astype(np.float32)


def study_series(folder: str | Path) -> tuple[list[DicomSeries], list[str]]:
    """The series of `folder` to predict, and a one-line note for each one skipped."""
    chosen, notes = [], []
    for series in find_series(folder):
        reason = skip_reason(series)
        if reason is None:
            chosen.append(series)
        else:
            notes.append(f"skipped {series}: {reason}")
    return chosen, notes


def read_dicom_series(folder: str | Path, max_voxels: int = DataConfig.max_voxels) -> Volume:
    """The one axial CT volume series of a DICOM folder (searched recursively), or of one
    multi-frame DICOM file."""
    folder = Path(folder)
    if not (folder.is_dir() or is_dicom_file(folder)):
        raise UsageError(f"{folder} is not a folder of DICOM files")
    chosen, notes = study_series(folder)
    if len(chosen) != 1:
        found = "; ".join(str(s) for s in chosen) or "; ".join(notes) or "no DICOM image files"
        raise UsageError(f"DICOM folder {folder} holds {len(chosen)} axial CT volume series, "
                         f"not one ({found})")
    return read_series(chosen[0], max_voxels)


def read_scan(path: str | Path, max_voxels: int = DataConfig.max_voxels) -> Volume:
    """A CT scan from a NIfTI file, a DICOM series folder or an Enhanced CT file; refused
    before decoding when larger than `max_voxels` (`data.max_voxels`)."""
    path = Path(path)
    if path.is_dir() or is_dicom_file(path):
        return read_dicom_series(path, max_voxels)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if not is_nifti_name(path.name):
        raise UsageError(f"{path} is neither a NIfTI file (.nii, .nii.gz) nor DICOM")
    return read_nifti(path, max_voxels)
