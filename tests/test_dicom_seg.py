"""DICOM SEG read back with highdicom: frame by frame the label map on the acquired slices, for a
series predicted end to end and for a tilted series with uneven gaps on a regular grid."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_predict import _checkpoint, one_thread  # noqa: F401 (autouse)

from ichseg.cli import main
from ichseg.inference.dicom_seg import dicom_source, write_dicom_seg

SUBTYPES = {1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}


def _series(folder: Path, z_positions: list[float], tilt_degrees: float = 0.0) -> list[str]:
    """A 64 x 64 CT series made from pydicom's CT_small.dcm (its pixels halved, air in its first
    rows and columns so that the head crop is off-centre), one slice per z position (LPS, mm),
    tilted about the patient's left-right axis; returns the SOP UIDs in the order of
    `z_positions`."""
    folder.mkdir(parents=True)
    series_uid, uids = generate_uid(), []
    angle = math.radians(tilt_degrees)
    for i, z in enumerate(z_positions):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = ds.pixel_array[::2, ::2].copy()
        pixels[:12], pixels[:, :24] = 0, 0  # stored 0 is -1024 HU
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.PixelSpacing = [2 * float(v) for v in ds.PixelSpacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, math.cos(angle), -math.sin(angle)]
        ds.ImagePositionPatient = [-40.0, -30.0, z]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.InstanceNumber = len(z_positions) - i  # the order comes from the positions
        ds.save_as(folder / f"slice{i}.dcm")
        uids.append(ds.SOPInstanceUID)
    return uids


def _frames(seg_path: Path, uids: list[str], segments: list[int]) -> np.ndarray:
    """The SEG read back as one label map (rows, columns) per source instance."""
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=segments, combine_segments=True,
        skip_overlap_checks=True)


def test_predicted_series_seg_matches_the_label_map_slice_by_slice(tmp_path):
    checkpoint = _checkpoint(tmp_path / "everywhere.pt", -5.0, 5.0)
    uids = _series(tmp_path / "series", [0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "series"),
                 "--out", str(out), "--dicom-seg"]) == 0
    image = nib.load(out / "series.nii.gz")
    labels = np.asarray(image.dataobj)
    assert labels.shape == (64, 64, 6) and 0 < labels.sum() < labels.size
    seg_path = out / "series.seg.dcm"
    frames = _frames(seg_path, uids, [1])
    # Each acquired pixel's centre, placed by its file's header and looked up in the label map
    # through the map's own affine: the SEG must agree whatever voxel order the map was written in.
    to_voxel = np.linalg.inv(image.affine)
    rows, columns = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    for k, path in enumerate(sorted((tmp_path / "series").iterdir(),
                                    key=lambda p: int(p.stem.removeprefix("slice")))):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row_step, column_step = (float(v) for v in ds.PixelSpacing)
        cosines = np.array(ds.ImageOrientationPatient, dtype=float)
        lps = (np.array(ds.ImagePositionPatient, dtype=float)
               + columns[..., None] * column_step * cosines[:3]
               + rows[..., None] * row_step * cosines[3:])
        ras = np.concatenate([-lps[..., :2], lps[..., 2:], np.ones((64, 64, 1))], axis=-1)
        ijk = np.rint(ras @ to_voxel.T)[..., :3].astype(int)
        assert np.array_equal(frames[k], labels[ijk[..., 0], ijk[..., 1], ijk[..., 2]]), k
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG"
    referenced = {item.ReferencedSOPInstanceUID for item in
                  seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uids)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "1386000"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert "series.seg.dcm" in (out / "volumes.csv").read_text()
    # A series given as its files (a study split into series) is written over those files.
    files = sorted((tmp_path / "series").iterdir())
    assert dicom_source(SimpleNamespace(files=files)) == files
    assert dicom_source(tmp_path / "series") == tmp_path / "series"
    assert dicom_source(out / "series.nii.gz") is None


def test_tilted_series_with_uneven_gaps_gets_the_labels_where_its_slices_lie(tmp_path):
    z_positions = [0.0, 4.0, 8.0, 15.0, 22.0, 29.0]  # 4 mm gaps, then 7 mm
    uids = _series(tmp_path / "series", z_positions, tilt_degrees=20.0)
    # The label map on a regular 1 mm grid (RAS), as a resampling reader would give it: a box
    # of IPH and a box of SAH, each a range of voxel centres in mm.
    origin = np.array([-60.0, -60.0, -40.0])
    affine = np.eye(4)
    affine[:3, 3] = origin
    labels = np.zeros((140, 140, 90), np.uint8)
    iph = ((0.0, 20.0), (10.0, 40.0), (-5.0, 12.0))
    sah = ((-30.0, -10.0), (-20.0, 0.0), (14.0, 40.0))
    for code, box in ((2, iph), (4, sah)):
        index = tuple(slice(int(lo - o), int(hi - o) + 1) for (lo, hi), o in zip(box, origin,
                                                                                strict=True))
        labels[index] = code
    seg_path = write_dicom_seg(tmp_path / "series", labels, affine, SUBTYPES,
                               tmp_path / "tilted.seg.dcm")
    frames = _frames(seg_path, uids, [1, 2, 3, 4, 5])

    # Each pixel's place in RAS mm, from the DICOM attributes, rounded to the nearest voxel
    # centre of the map (1 mm), decides its expected label.
    angle = math.radians(20.0)
    spacing = 2 * 0.661468  # CT_small's pixel spacing, halved resolution
    rows, columns = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    for k, z in enumerate(z_positions):
        lps = (np.array([-40.0, -30.0, z])[:, None, None]
               + np.array([1.0, 0.0, 0.0])[:, None, None] * columns * spacing
               + np.array([0.0, math.cos(angle), -math.sin(angle)])[:, None, None] * rows * spacing)
        ras = np.rint(lps * np.array([-1.0, -1.0, 1.0])[:, None, None])
        expected = np.zeros((64, 64), np.uint8)
        for code, box in ((2, iph), (4, sah)):
            inside = np.ones((64, 64), bool)
            for axis, (lo, hi) in enumerate(box):
                inside &= (ras[axis] >= lo) & (ras[axis] <= hi)
            expected[inside] = code
        assert np.array_equal(frames[k], expected), k
    assert {2, 4} <= set(np.unique(frames))  # both bleeds cross the slices

    seg = pydicom.dcmread(seg_path)
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["82999001", "274100004", "50960005", "21454007", "35486000"]
    assert seg.SegmentSequence[2].AnatomicRegionSequence[0].CodeValue == "35764002"  # IVH
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(SUBTYPES.values())
