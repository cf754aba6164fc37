"""Reading and writing scans: NIfTI through nibabel (DICOM studies: `ichseg.data.dicom`).

Every reader returns a `Volume`: the voxels in the file's own order (X, Y, Z) and the RAS affine
(NIfTI convention). Anything a user can fix (a missing, truncated or foreign file, NaNs, a DICOM
folder holding several series) raises `UsageError` with one sentence naming the file or folder.
"""

from __future__ import annotations

import gzip
import io
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ichseg.config import DataConfig
from ichseg.errors import UsageError
from ichseg.fileio import atomic_path, format_bytes

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
# Deflate compresses at most about 1032:1, so a gzip file of n bytes inflates to at most this * n.
_DEFLATE_MAX_RATIO = 1032

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


def refuse_oversized(source: object, shape: tuple[int, ...], max_voxels: int) -> None:
    """UsageError when a scan of `shape` (from its headers, before decoding) holds more voxels
    than `max_voxels` (`data.max_voxels`): too large to be a head CT, and decoding it could
    fill the memory."""
    voxels = math.prod(int(n) for n in shape)
    if voxels > max_voxels:
        raise UsageError(f"{source} is {' x '.join(str(int(n)) for n in shape)} voxels "
                         f"({format_bytes(voxels * np.dtype(np.float32).itemsize)} as float32), "
                         f"more than data.max_voxels ({max_voxels}): too large to be a head CT; "
                         f"raise data.max_voxels if it is real")


def _stated_header(path: Path) -> nib.Nifti1Header | None:
    """The header at the start of a NIfTI file, read alone (through gzip for a .nii.gz); None
    where there is none to read (nibabel's full read then says why)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        with (gzip.open if gzipped else open)(path, "rb") as f:
            head = f.read(540)
        for header_class, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
            if len(head) >= size and head[:4] in {size.to_bytes(4, "little"),
                                                  size.to_bytes(4, "big")}:
                header = header_class.from_fileobj(io.BytesIO(head[:size]))
                header.get_data_shape()  # raises on a damaged dim field
                return header
    except _NIFTI_READ_ERRORS:
        pass
    return None


def _refuse_claims_beyond_the_file(path: Path, img: nib.Nifti1Pair | None,
                                   header: nib.Nifti1Header) -> None:
    """UsageError when the header claims more voxel bytes than the file holds, before anything
    is allocated: nibabel allocates what the header claims (a damaged header of a few kB asked
    for 128 GiB) and only then finds the file short. Without `img` (before opening it) a .nii.gz
    is held to the most its size can inflate to."""
    claimed = int(header.get_data_offset()) + math.prod(
        int(n) for n in header.get_data_shape()) * header.get_data_dtype().itemsize
    # An opened .nii.gz holds its decompressed bytes (_open_nifti).
    held_in = img.file_map["image"].fileobj if img is not None else None
    if held_in is not None and hasattr(held_in, "getbuffer"):
        held, bound = held_in.getbuffer().nbytes, ""
    elif path.name.lower().endswith(".gz"):
        held, bound = path.stat().st_size * _DEFLATE_MAX_RATIO, "at most "
    else:
        held, bound = path.stat().st_size, ""
    if claimed > held:
        raise UsageError(f"{path} is truncated or its header is damaged: the header claims "
                         f"{tuple(header.get_data_shape())} voxels of {header.get_data_dtype()} "
                         f"({format_bytes(claimed)}) where the file holds {bound}"
                         f"{format_bytes(held)}")


def _load_nifti(path: str | Path, max_voxels: int = DataConfig.max_voxels,
                ) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a NIfTI file and its voxels (unscaled dtype, scaling applied), refusing bad files:
    a header that claims more than the file holds, or more than `max_voxels` voxels, before
    the voxels are decompressed or read."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    stated = _stated_header(path)
    if stated is not None:
        _refuse_claims_beyond_the_file(path, None, stated)
        refuse_oversized(path, stated.get_data_shape(), max_voxels)
    try:
        img = _open_nifti(path)
        if not isinstance(img, nib.Nifti1Pair):
            raise UsageError(f"{path} is not a NIfTI file (nibabel reads it as "
                             f"{type(img).__name__})")
        _refuse_claims_beyond_the_file(path, img, img.header)
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


def read_nifti(path: str | Path, max_voxels: int = DataConfig.max_voxels) -> Volume:
    """Read a CT image: float32 voxels (the header's scaling applied) and the header's affine.

    The affine is nibabel's `img.affine`: the sform when its code is set, else the qform, as every
    NIfTI reader does. Warns (does not refuse) when the values do not look like HU. Refuses a
    file of more than `max_voxels` voxels (`data.max_voxels`) from its header.
    """
    img, data = _load_nifti(path, max_voxels)
    array = np.asarray(data, dtype=np.float32)
    if not np.isfinite(array).all():
        raise UsageError(f"{path} holds NaN or infinite values")
    volume = Volume(array, np.asarray(img.affine, dtype=np.float64), Path(path), img.header)
    _warn_if_not_hu(volume)
    return volume


def read_label(path: str | Path, max_voxels: int = DataConfig.max_voxels) -> Volume:
    """Read a label map: uint8 voxels, which must be whole numbers from 0 to 255 in the file
    (and no more than `max_voxels` of them).

    Which of those values are allowed codes depends on the dataset (see `layouts.LabelMapping`).
    """
    img, data = _load_nifti(path, max_voxels)
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
    # nibabel picks gzip from the suffix, so the temp name keeps it. Not fsynced (as before): a
    # label map lost to a power cut is predicted again, and predict's figures stay as measured.
    with atomic_path(path, suffix=suffix, durable=False) as tmp:
        img.to_filename(tmp)
    return path
