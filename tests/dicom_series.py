"""DICOM series built with pydicom for the tests: pydicom's real CT slice (CT_small.dcm) as the
template, with any geometry, modality, SOP class or transfer syntax, and HU that are a linear
function of the position in the patient, so that a converted volume can be checked voxel by voxel
against where the headers put each pixel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

CT_SMALL = get_testdata_file("CT_small.dcm")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
XRAY_DOSE_REPORT = "1.2.840.10008.5.1.4.1.1.88.67"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PIXEL_MM = 2.0
# HU at a point (x, y, z) in LPS mm: steep enough that one voxel off is many HU off.
SLOPES = np.array([3.0, 4.0, 2.0])
INTERCEPT = -1024  # stored values are HU + 1024: unsigned, as every codec takes them


def hu_at(lps: np.ndarray) -> np.ndarray:
    return lps @ SLOPES


def tilted(degrees: float) -> tuple[float, ...]:
    """An axial orientation whose column direction is tilted about x, as a gantry tilt does."""
    angle = np.deg2rad(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(-np.sin(angle)))


def _encode(ds: pydicom.Dataset, stored: np.ndarray, syntax: str | None) -> None:
    ds.PixelData = stored.tobytes()
    if syntax is None:
        return
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")  # pydicom's own encoder
        return
    import imagecodecs

    if syntax == JPEG2000Lossless:
        frame = imagecodecs.jpeg2k_encode(stored, codecformat="J2K", reversible=True)
    elif syntax == JPEGLosslessSV1:  # process 14, first-order prediction: PACS exports' usual
        frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=16)
    elif syntax == JPEGLSLossless:
        frame = imagecodecs.jpegls_encode(stored, level=0)
    else:
        raise ValueError(syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def write_series(folder: Path, positions: Sequence[Sequence[float]], *,
                 orientation: Sequence[float] = AXIAL, size: int = 32, number: int = 2,
                 description: str = "HEAD STD", modality: str = "CT",
                 sop_class: str = CT_IMAGE, image_type: Sequence[str] = ("ORIGINAL", "PRIMARY",
                                                                         "AXIAL"),
                 syntax: str | None = None, tilt: float | None = None,
                 pixel_spacing: Sequence[float] = (PIXEL_MM, PIXEL_MM)) -> str:
    """Write one series into `folder` (file names and instance numbers in neither position nor
    any other order), each pixel holding `hu_at` its position; returns its SeriesInstanceUID.
    `pixel_spacing` is DICOM's PixelSpacing: between rows, then between columns (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for k, position in enumerate(positions):
        ds = pydicom.dcmread(CT_SMALL)  # a fresh copy: Dataset.copy() would share elements
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = INTERCEPT, 1
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality, ds.ImageType = modality, list(image_type)
        ds.InstanceNumber = (5 * k + 2) % (len(positions) + 3)
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        stored = np.rint(hu_at(pixel_positions(ds)) - INTERCEPT).astype(np.uint16)
        _encode(ds, stored, syntax)
        ds.save_as(folder / f"IM{(7 * k + 3) % 101:04d}", enforce_file_format=True)
    return uid


def pixel_positions(ds: pydicom.Dataset) -> np.ndarray:
    """(rows, columns, 3): where a DICOM image's headers put each pixel's centre, LPS mm.
    Along a row (the column index grows) a pixel moves by the row cosine times the spacing
    between columns (PixelSpacing's second value); down a column, by the column cosine times the
    spacing between rows (its first)."""
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    rows, columns = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
    return (np.array(ds.ImagePositionPatient, dtype=float)
            + columns[..., None] * column_spacing * orientation[:3]
            + rows[..., None] * row_spacing * orientation[3:])


def stack(slices: Sequence[float], orientation: Sequence[float] = AXIAL,
          start: Sequence[float] = (-30.0, -20.0, 0.0)) -> list[tuple[float, ...]]:
    """Positions of slices moved along z (the table's direction) by the given distances."""
    return [(start[0], start[1], start[2] + s) for s in slices]


def check_against_headers(volume, positions: Sequence[Sequence[float]],
                          orientation: Sequence[float] = AXIAL, size: int = 32,
                          tolerance: float = 1.0) -> int:
    """Assert that every voxel of `volume` lying between two slices of the series (inside both
    slices' pixels) holds the HU of its position, as the headers place the pixels; returns
    how many voxels were checked."""
    row_cosine, column_cosine = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_cosine, column_cosine)
    origins = np.asarray(positions, float)
    origins = origins[np.argsort(origins @ normal)]
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij"), -1)
    ras = ijk.reshape(-1, 3) @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    lps = ras * [-1.0, -1.0, 1.0]
    depth = lps @ normal
    slot = np.clip(np.searchsorted(origins @ normal, depth + 1e-6) - 1, 0, len(origins) - 2)
    inside = (depth >= origins[0] @ normal - 1e-3) & (depth <= origins[-1] @ normal + 1e-3)
    for neighbour in (slot, slot + 1):
        offset = lps - origins[neighbour]
        for cosine in (row_cosine, column_cosine):
            index = offset @ cosine / PIXEL_MM
            inside &= (index >= 1.0) & (index <= size - 2.0)
    values = volume.array.reshape(-1)
    assert np.abs(values[inside] - hu_at(lps[inside])).max() <= tolerance
    return int(inside.sum())


def write_enhanced(series_folder: Path, path: Path, number: int = 12,
                   sop_class: str | None = None, modality: str | None = None) -> pydicom.Dataset:
    """Convert the classic series in `series_folder` into one Legacy Converted Enhanced CT object
    (highdicom's converter, what archives do) written to `path`, with its own series UID and
    `number`; `sop_class` and `modality` overwrite the object's own, to make what is refused.
    Returns the object as written."""
    import highdicom as hd

    slices = [pydicom.dcmread(p) for p in sorted(series_folder.iterdir())]
    for ds in slices:
        # The template's padding value (-2000) was signed; the converter writes it unsigned.
        del ds.PixelPaddingValue
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=number,
        sop_instance_uid=generate_uid(), instance_number=1)
    if sop_class is not None:
        converted.SOPClassUID = converted.file_meta.MediaStorageSOPClassUID = sop_class
    if modality is not None:
        converted.Modality = modality
    path.parent.mkdir(parents=True, exist_ok=True)
    converted.save_as(path, enforce_file_format=True)
    return converted
