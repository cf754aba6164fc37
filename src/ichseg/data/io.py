"""Reading and writing scans: NIfTI through nibabel, DICOM series through pydicom.

Every reader returns a `Volume`: the voxels in the file's own order (X, Y, Z) and the RAS affine
(NIfTI convention). Anything a user can fix (a missing, truncated or foreign file, NaNs, a DICOM
folder holding several series) raises `UsageError` with one sentence naming the file or folder.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ichseg.errors import UsageError
from ichseg.fileio import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# nnU-Net names the first input channel of a case `<case>_0000`; ichseg reads one CT channel.
NNUNET_CHANNEL_SUFFIX = "_0000"

# What nibabel raises on a file that is not NIfTI, is truncated, or whose gzip stream is corrupt.
_NIFTI_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

_GZIP_MAGIC = b"\x1f\x8b"
# A NIfTI-1 or -2 file starts with its header size (348 or 540) in either byte order; the header
# and the 4-byte extension flag come before any voxel.
_NIFTI_HEADER_SIZES = {n.to_bytes(4, order) for n in (348, 540) for order in ("little", "big")}
_NIFTI_MIN_BYTES = 352

# DICOM is LPS (x to the patient's left, y to the back); NIfTI is RAS: negate the first two axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Thresholds of the "does this look like CT in HU" check: any head CT holds air (about -1000 HU)
# and bone (hundreds to thousands of HU), so a scan without both was probably scaled otherwise.
_HU_AIR_BELOW = -200.0
_HU_BONE_ABOVE = 200.0


@dataclass
class Volume:
    """A 3D scan in its file's voxel order (X, Y, Z) with its RAS affine (NIfTI convention).

    `header` is the NIfTI header it was read from (None for DICOM or arrays made in memory), kept
    so that a file written "like" this one carries the same qform/sform codes.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: nib.Nifti1Header | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis: the lengths of the affine's columns."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(name: str) -> str:
    """`case.nii.gz` or `case.nii` -> `case`."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly inside `folder`, sorted; hidden files (macOS `._*`) skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_nifti_name(p.name))


def hu_warning(volume: Volume) -> str | None:
    """A sentence saying why `volume` does not look like CT in HU, or None when it does."""
    low, high = float(volume.array.min()), float(volume.array.max())
    if low > _HU_AIR_BELOW or high < _HU_BONE_ABOVE:
        return (f"{volume.path} does not look like CT in Hounsfield units (values {low:g} to "
                f"{high:g}; a head CT holds air near -1000 and bone above {_HU_BONE_ABOVE:g})")
    return None


def _warn_if_not_hu(volume: Volume) -> None:
    message = hu_warning(volume)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)


def _is_truncated(path: Path, exc: Exception) -> bool:
    """Whether a NIfTI file that failed to load was cut short rather than never NIfTI."""
    # gzip raises EOFError on a cut stream; nibabel's array proxy says "Expected N bytes".
    if isinstance(exc, EOFError) or str(exc).startswith("Expected"):
        return True
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] == _GZIP_MAGIC:
            # Cut inside the header, nibabel only sees too few bytes; gzip knows the stream ended
            # early. Decompressing to the end costs time only on this failure path.
            with gzip.open(path) as stream:
                while stream.read(1 << 24):
                    pass
            return False
        return magic in _NIFTI_HEADER_SIZES and path.stat().st_size < _NIFTI_MIN_BYTES
    except EOFError:
        return True
    except (OSError, zlib.error):
        return False


def _open_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """nibabel's image of a NIfTI file, a .nii.gz decompressed whole in one call.

    nibabel streams a .nii.gz through `gzip` in small chunks, taking the GIL back for each: beside
    another Python thread (predict reads the next scan while it loads the checkpoint or writes the
    last case) a 512 x 512 x 32 scan then took 250 ms instead of 80. One `gzip.decompress` holds
    no GIL while it inflates and is faster alone too.
    """
    raw = path.read_bytes() if path.name.lower().endswith(".gz") else b""
    if raw[:2] == _GZIP_MAGIC:
        data = gzip.decompress(raw)
        header_size = data[:4]
        for image_class, size in ((nib.Nifti1Image, 348), (nib.Nifti2Image, 540)):
            if header_size in {size.to_bytes(4, "little"), size.to_bytes(4, "big")}:
                return image_class.from_bytes(data)
    # mmap=False: the voxels are copied anyway, and a map would hold the file open.
    return nib.load(path, mmap=False)


def _load_nifti(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a NIfTI file and its voxels (unscaled dtype, scaling applied), refusing bad files."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    try:
        img = _open_nifti(path)
        if not isinstance(img, nib.Nifti1Pair):
            raise UsageError(f"{path} is not a NIfTI file (nibabel reads it as "
                             f"{type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except _NIFTI_READ_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "is truncated" if _is_truncated(path, exc) else "is not a readable NIfTI file"
        raise UsageError(f"{path} {what} ({reason})") from None
    shape = data.shape
    # A 4D (or 5D) file whose extra dimensions are all 1 is one 3D volume, as many tools write.
    if data.ndim > 3 and all(n == 1 for n in shape[3:]):
        data = data.reshape(shape[:3])
    if data.ndim != 3:
        raise UsageError(f"{path} has shape {shape}; ichseg needs a single 3D volume")
    return img, data


def read_nifti(path: str | Path) -> Volume:
    """Read a CT image: float32 voxels (the header's scaling applied) and the header's affine.

    The affine is nibabel's `img.affine`: the sform when its code is set, else the qform, as every
    NIfTI reader does. Warns (does not refuse) when the values do not look like HU.
    """
    img, data = _load_nifti(path)
    array = np.asarray(data, dtype=np.float32)
    if not np.isfinite(array).all():
        raise UsageError(f"{path} holds NaN or infinite values")
    volume = Volume(array, np.asarray(img.affine, dtype=np.float64), Path(path), img.header)
    _warn_if_not_hu(volume)
    return volume


def read_label(path: str | Path) -> Volume:
    """Read a label map: uint8 voxels, which must be whole numbers from 0 to 255 in the file.

    Which of those values are allowed codes depends on the dataset (see `layouts.LabelMapping`).
    """
    img, data = _load_nifti(path)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise UsageError(f"{path} holds NaN or infinite values")
        rounded = np.rint(data)
        # Float-stored masks may carry rounding noise from the tool that wrote them.
        if np.abs(data - rounded).max(initial=0.0) > 1e-3:
            raise UsageError(f"label file {path} holds fractional values; labels must be "
                             f"whole-number codes")
        data = rounded
    low, high = (data.min(), data.max()) if data.size else (0, 0)
    if low < 0 or high > 255:
        raise UsageError(f"label file {path} holds values from {low:g} to {high:g}; labels must "
                         f"be codes from 0 to 255")
    return Volume(np.asarray(data, dtype=np.uint8), np.asarray(img.affine, dtype=np.float64),
                  Path(path), img.header)


def label_values(array: np.ndarray) -> list[int]:
    """The distinct values of a uint8 label map, by counting: far faster than sorting."""
    return np.flatnonzero(np.bincount(array.ravel(), minlength=256)).tolist()


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray,
                like: Volume | str | Path | None = None) -> Path:
    """Write `array` with `affine` to `path` atomically (`ichseg.fileio`).

    With `like` (a Volume or a NIfTI file), its header is the template: its qform and sform codes
    are kept. Without one, or when `like` has neither code set, both codes are 1 (scanner), as
    DICOM converters write them.
    """
    path = Path(path)
    if not is_nifti_name(path.name):
        raise UsageError(f"{path} must end in .nii or .nii.gz")
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = np.asarray(affine, dtype=np.float64)

    header = None
    if isinstance(like, Volume):
        header = like.header
    elif like is not None:
        header = _load_nifti(like)[0].header
    header = header.copy() if header is not None else nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    # The template's scaling and display range belong to its own voxels, not to these.
    header.set_slope_inter(None, None)
    header["cal_min"] = header["cal_max"] = 0
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        sform_code = qform_code = 1
    img = nib.Nifti1Image(array, affine, header)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    # nibabel picks gzip from the suffix, so the temp name keeps it.
    with atomic_path(path, suffix=suffix) as tmp:
        img.to_filename(tmp)
    return path


# ----------------------------------------------------------------------------------------- DICOM

def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: the `DICM` marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


def _rsna_corrected(pixels: np.ndarray, ds) -> tuple[np.ndarray, float]:
    """Stored values and intercept, with the RSNA 2019 12-bit quirk undone (DOMAIN.md).

    Some RSNA scans store 12-bit unsigned values with an intercept near 0 although the pixels
    were written as if offset by -1000: shift by 1000, wrap at 4096, and use intercept -1000.
    """
    intercept = float(ds.get("RescaleIntercept", 0.0))
    if int(ds.get("BitsStored", 16)) == 12 and int(ds.get("PixelRepresentation", 0)) == 0 \
            and intercept > -100:
        shifted = pixels.astype(np.int32) + 1000
        shifted[shifted >= 4096] -= 4096
        return shifted, -1000.0
    return pixels, intercept


def _series_label(uid: str, datasets: list) -> str:
    description = str(datasets[0].get("SeriesDescription", "")).strip()
    name = f"{uid} ({len(datasets)} files"
    return name + (f", {description!r})" if description else ")")


def read_dicom_series(folder: str | Path) -> Volume:
    """Read one DICOM series folder as a HU volume with a RAS affine.

    Slices are ordered by ImagePositionPatient projected on the slice normal (row x column
    direction cosines), never by InstanceNumber. HU = value * RescaleSlope + RescaleIntercept,
    per slice. The array's X axis runs along a row (the column index), Y down the columns, Z
    along the normal. The z step is taken from the positions (a single slice uses SliceThickness).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of DICOM files")
    headers = []
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise UsageError(f"{path} is not a readable DICOM file ({exc})") from None
        if "Rows" in ds:  # DICOMDIR, reports and other files without an image are skipped
            headers.append((path, ds))
    if not headers:
        raise UsageError(f"{folder} holds no DICOM image files")

    by_series: dict[str, list] = {}
    for path, ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if len(by_series) > 1:
        found = "; ".join(_series_label(uid, [ds for _, ds in items])
                          for uid, items in sorted(by_series.items()))
        raise UsageError(f"DICOM folder {folder} mixes {len(by_series)} series ({found}); put "
                         f"each series in its own folder")

    for path, ds in headers:
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                raise UsageError(f"DICOM file {path} has no {key}, so its slice cannot be placed")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise UsageError(f"DICOM file {path} is a multi-frame image; ichseg reads series "
                             f"of single-slice files")
    orientation = np.array(headers[0][1].ImageOrientationPatient, dtype=np.float64)
    for path, ds in headers[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orientation,
                           atol=1e-4):
            raise UsageError(f"DICOM file {path} is oriented differently from the rest of "
                             f"series folder {folder}")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(positions @ normal, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    steps = np.diff(distances)
    if steps.size and steps.min() < 1e-3:
        i = int(np.argmin(steps))
        raise UsageError(f"DICOM files {headers[i][0].name} and {headers[i + 1][0].name} in "
                         f"{folder} lie at the same position; the folder holds a repeated slice")
    if steps.size and steps.max() - steps.min() > 0.01 * steps.mean() + 1e-3:
        warnings.warn(f"slices in {folder} are unevenly spaced ({steps.min():.3g} to "
                      f"{steps.max():.3g} mm, missing slices?); using the mean spacing",
                      UserWarning, stacklevel=2)

    rows, columns = int(headers[0][1].Rows), int(headers[0][1].Columns)
    volume = np.empty((columns, rows, len(headers)), dtype=np.float32)
    for k, (path, _) in enumerate(headers):
        ds = pydicom.dcmread(path)
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise UsageError(f"DICOM file {path} is {ds.Rows} x {ds.Columns} pixels, unlike the "
                             f"{rows} x {columns} of the rest of its series")
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
            raise UsageError(f"DICOM file {path} cannot be decoded (transfer syntax "
                             f"{ds.file_meta.get('TransferSyntaxUID', '?')}: {exc})") from None
        pixels, intercept = _rsna_corrected(pixels, ds)
        slope = float(ds.get("RescaleSlope", 1.0))
        volume[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T

    first = headers[0][1]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if len(headers) > 1:
        # The mean step between slice origins: exact for evenly spaced slices, and it keeps the
        # shear of a tilted gantry rather than pretending the slices are stacked straight.
        slice_step = (positions[-1] - positions[0]) / (len(headers) - 1)
    else:
        thickness = float(first.get("SliceThickness", 0) or 0)
        if thickness <= 0:
            raise UsageError(f"DICOM series {folder} has one slice and no SliceThickness, so its "
                             f"z spacing is unknown")
        slice_step = normal * thickness
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns): moving along a row (the X axis) steps by
    # the column spacing, moving down a column (Y) by the row spacing.
    lps[:3, 0] = row_cosine * column_spacing
    lps[:3, 1] = column_cosine * row_spacing
    lps[:3, 2] = slice_step
    lps[:3, 3] = positions[0]
    result = Volume(volume, _LPS_TO_RAS @ lps, folder)
    _warn_if_not_hu(result)
    return result


# ----------------------------------------------------------------------------------------- inputs

def read_scan(path: str | Path) -> Volume:
    """A CT scan from a NIfTI file or a DICOM series folder."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if not is_nifti_name(path.name):
        raise UsageError(f"{path} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM folder")
    return read_nifti(path)


def input_case_id(path: Path) -> str:
    """The case id of a predict input: a folder's name, or a NIfTI file's name without its
    extension and without nnU-Net's `_0000` channel suffix."""
    if path.is_dir():
        return path.name
    stem = nifti_stem(path.name)
    if stem.endswith(NNUNET_CHANNEL_SUFFIX) and len(stem) > len(NNUNET_CHANNEL_SUFFIX):
        stem = stem[: -len(NNUNET_CHANNEL_SUFFIX)]
    return stem


def list_inputs(paths: Iterable[str | Path] | str | Path) -> list[tuple[str, Path]]:
    """(case id, path) for each scan to predict: NIfTI files, folders of NIfTI files, and DICOM
    series folders (named after the folder). Refuses anything else and repeated case ids."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and is_nifti_name(path.name):
            found.append((input_case_id(path), path))
        elif path.is_dir() and (files := nifti_files(path)):
            found.extend((input_case_id(p), p) for p in files)
        elif path.is_dir() and dicom_files(path):
            found.append((input_case_id(path), path))
        elif not path.exists():
            raise UsageError(f"input {path} does not exist")
        else:
            raise UsageError(f"input {path} is not a NIfTI file, a folder of NIfTI files or a "
                             f"DICOM series folder")
    seen: dict[str, Path] = {}
    for case_id, path in found:
        if case_id in seen:
            raise UsageError(f"inputs {seen[case_id]} and {path} would both be written as case "
                             f"{case_id!r}; rename one")
        seen[case_id] = path
    if not found:
        raise UsageError("no input scans were given")
    return found

