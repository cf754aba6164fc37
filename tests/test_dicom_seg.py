"""DICOM SEG read back with highdicom and pydicom: a study predicted end to end
(`ichseg predict --dicom-seg`) whose series are plain, gantry-tilted, unevenly spaced or both,
frame by frame against the label map on each acquired slice; an Enhanced CT copy of a series
beside it, predicted alike, its SEG over the object's frames; the writer alone on a tilted,
uneven series with known boxes; the SNOMED CT codes against pydicom's dictionary."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_series import AXIAL, pixel_positions, stack, tilted, write_enhanced, write_series
from pydicom.sr.codedict import CONCEPTS, codes
from test_predict import one_thread  # noqa: F401 (autouse)

from ichseg.cli import main
from ichseg.config import preset_config
from ichseg.inference.dicom_seg import dicom_source, segment_codes, write_dicom_seg
from ichseg.models import build_model

# The test series hold a linear HU ramp, not a head: no air or bone.
pytestmark = pytest.mark.filterwarnings("ignore:.*Hounsfield:UserWarning")

SUBTYPES = {1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])

# The threshold network's bands: background below LOW_HU, SAH up to HIGH_HU, IPH above, read
# from the tiny preset's second channel, the subdural window (-20 to 180 HU).
SUBDURAL_CHANNEL, LOW_HU, HIGH_HU = 1, 20.0, 140.0
# Where the bands land is known to a few mm: the network sees the scan at 7.2 x 7.2 x 5 mm (its
# strided stem samples every other voxel of the 3.6 mm grid) and interpolates back, and a voxel
# of the predicted grid lies up to half a voxel (2 x 2 x 5 mm at most) from the pixel it is
# carried to. Near a slice's border, within about one stem step and the in-plane shift of a
# tilted neighbour slice, the background filling the regular grid beyond the acquired pixels
# bleeds in. Measured on these series: more than 12 mm inside the border, no pixel more than
# 17 HU (about 3 mm along the ramp's gradient) from a threshold gets another band.
SETTLED_HU, BORDER_PIXELS = 30.0, 6


def _threshold_checkpoint(path: Path) -> Path:
    """A tiny nnMamba for the subtypes whose weights make it a threshold on HU (the bands above).

    What is tested is how the label map is carried onto the acquired slices and encoded, so the
    prediction must be non-trivial and known in advance, which a model trained for seconds is not.
    Centre taps pass the subdural window through the stem and the finest decoder level (BatchNorm
    at its initial running statistics is the identity, the skip's SE gate is held open, the
    coarser levels are cut off), and the head's logits are linear in it, so the argmax gives
    bands: background, then SAH (code 4), then IPH (code 2); the other classes never win.
    """
    cfg = preset_config("tiny")
    cfg.data.subtypes = True
    cfg.model.norm = "batch"  # the identity at its initial running statistics, as said above
    # Windows smaller than the test series, so that none is padded (the padding, background,
    # would bleed into the bands at the grid's edges, which a tilted slice crosses).
    cfg.data.patch_size = [16, 16, 4]
    torch.manual_seed(0)
    model = build_model(cfg)
    centre = (1,) * 3
    with torch.no_grad():
        first, second = model.stem[0][0], model.stem[1][0]
        first.weight.zero_()
        first.weight[(0, SUBDURAL_CHANNEL, *centre)] = 1.0
        second.weight.zero_()
        second.weight[(0, 0, *centre)] = 1.0
        level = model.decoder[0]
        gate_in, gate_out = level.skip_gate.gate[0], level.skip_gate.gate[2]
        gate_in.weight.zero_()
        gate_out.weight.zero_()
        gate_out.bias.fill_(30.0)
        merge, refine = level.conv[0][0], level.conv[1][0]
        coarse_channels = merge.in_channels - gate_in.in_features  # the skip comes after them
        merge.weight.zero_()
        merge.weight[(0, coarse_channels, *centre)] = 1.0
        refine.weight.zero_()
        refine.weight[(0, 0, *centre)] = 1.0
        level, width = cfg.data.windows[SUBDURAL_CHANNEL]  # a channel is 0 to 1 across it
        low, high = ((hu - level + width / 2) / width for hu in (LOW_HU, HIGH_HU))
        assert 0 < low < high < 1
        head, steep = model.head.logits, 50.0
        head.weight.zero_()
        head.bias.fill_(-1e3)
        head.bias[0] = 0.0
        # SAH beats background above `low`; IPH beats SAH above `high`.
        head.weight[4, 0], head.bias[4] = steep, -steep * low
        head.weight[2, 0], head.bias[2] = 2 * steep, -steep * (low + high)
    torch.save({"model_state": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def _frames(seg_path: Path, uids: list[str], segments: list[int]) -> np.ndarray:
    """The SEG read back as one label map (rows, columns) per source instance."""
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=segments, combine_segments=True,
        skip_overlap_checks=True)


def _check_references(seg_path: Path, sources: list[pydicom.Dataset]) -> None:
    """The SEG refers to every source instance, and each of its frames to an existing one, on
    whose plane (position, orientation, pixel spacing) the frame lies."""
    seg = pydicom.dcmread(seg_path)
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} \
        == set(by_uid)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient,
        sources[0].ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing,
                               sources[0].PixelSpacing)
    assert int(seg.NumberOfFrames) == len(seg.PerFrameFunctionalGroupsSequence) > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID in by_uid
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            by_uid[source.ReferencedSOPInstanceUID].ImagePositionPatient, atol=1e-3)


SERIES = {  # number: (folder, slice distances along the table in mm, gantry tilt in degrees)
    1: ("plain", [0, 5, 10, 15, 20, 25], 0.0),  # dcm2niix's own grid
    2: ("tilted", [0, 5, 10, 15, 20, 25], -20.0),
    3: ("uneven", [0, 4, 8, 12, 19, 26, 33], 0.0),  # 4 mm then 7 mm, as head protocols do
    4: ("both", [0, 4, 8, 12, 19, 26], 15.0),
}


def test_study_predicted_with_seg_matches_the_label_map_on_every_acquired_slice(tmp_path):
    study = tmp_path / "study"
    for number, (name, slices, degrees) in SERIES.items():
        orientation = tilted(degrees) if degrees else AXIAL
        write_series(study / name, stack(slices, orientation), orientation=orientation,
                     tilt=degrees or None, number=number)
    out = tmp_path / "out"
    checkpoint = _threshold_checkpoint(tmp_path / "threshold.pt")
    with pytest.warns(UserWarning, match="regular grid") as caught:
        assert main(["predict", "--checkpoint", str(checkpoint), str(study), "--out", str(out),
                     "--dicom-seg"]) == 0
    # Each series but the plain one was predicted on a regular grid that is not the acquired one.
    assert sum("regular grid" in str(w.message) for w in caught) == len(SERIES) - 1
    with open(out / "volumes.csv", newline="") as f:
        listed = {row["case"]: row["dicom_seg"] for row in csv.DictReader(f)}
    seen, checked = [], []
    for number, (name, _, _) in SERIES.items():
        case = f"study_s{number}"
        assert listed[case] == str(out / f"{case}.seg.dcm")
        image = nib.load(out / f"{case}.nii.gz")
        labels = np.asarray(image.dataobj)
        to_voxel = np.linalg.inv(image.affine)
        sources = [pydicom.dcmread(path) for path in sorted((study / name).iterdir())]
        frames = _frames(out / f"{case}.seg.dcm", [ds.SOPInstanceUID for ds in sources],
                         list(SUBTYPES))
        assert len(frames) == len(sources)
        for ds, frame in zip(sources, frames, strict=True):
            # Each acquired pixel's centre, placed by its own file's headers, looked up in the
            # label map through the map's affine (nearest voxel): what the SEG frame must hold.
            ras = pixel_positions(ds) * LPS_TO_RAS
            ijk = np.rint(ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)
            assert ((ijk >= 0) & (ijk < labels.shape)).all()  # the grid covers every slice
            assert np.array_equal(frame, labels[ijk[..., 0], ijk[..., 1], ijk[..., 2]]), \
                (case, ds.ImagePositionPatient)
            # Independently of the label map: the pixel's own HU decides its band, where the
            # HU is not near a threshold.
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            band = np.where(hu > HIGH_HU, 2, np.where(hu > LOW_HU, 4, 0))
            settled = (np.abs(hu - LOW_HU) > SETTLED_HU) & (np.abs(hu - HIGH_HU) > SETTLED_HU)
            settled[:BORDER_PIXELS] = settled[-BORDER_PIXELS:] = False
            settled[:, :BORDER_PIXELS] = settled[:, -BORDER_PIXELS:] = False
            assert np.array_equal(frame[settled], band[settled]), (case, ds.ImagePositionPatient)
            seen.append(frame)
            checked.append(band[settled])
        _check_references(out / f"{case}.seg.dcm", sources)
    # Not a trivial map: each band covers a good part of the acquired pixels.
    values = np.concatenate([frame.ravel() for frame in seen])
    assert set(np.unique(values)) == {0, 2, 4}
    assert min(np.mean(values == code) for code in (0, 2, 4)) > 0.1
    checked = np.concatenate(checked)
    # Each band is checked against the HU at hundreds of pixels (of 4,936: 985 background,
    # 577 IPH, 3,374 SAH).
    assert min(np.sum(checked == code) for code in (0, 2, 4)) > 300
    # A series given as its files (a study split into series) is written over those files.
    files = sorted((study / "tilted").iterdir())
    assert dicom_source(SimpleNamespace(files=files)) == files
    assert dicom_source(study / "tilted") == study / "tilted"
    assert dicom_source(out / "study_s2.nii.gz") is None


def test_enhanced_ct_copy_predicts_like_its_series_and_its_seg_references_its_frames(
        tmp_path):
    """A study holding a tilted, unevenly spaced series and its Legacy Converted Enhanced CT
    copy: both predicted (`ichseg predict --dicom-seg`) to the same label map on the same grid,
    and the copy's SEG references the one object and, frame by frame, the frame it lies on."""
    _, slices, degrees = SERIES[4]
    orientation = tilted(degrees)
    study = tmp_path / "study"
    write_series(study / "classic", stack(slices, orientation), orientation=orientation,
                 tilt=degrees, number=4)
    enhanced = write_enhanced(study / "classic", study / "enhanced" / "ct.dcm", number=14)
    out = tmp_path / "out"
    checkpoint = _threshold_checkpoint(tmp_path / "threshold.pt")
    with pytest.warns(UserWarning, match="regular grid"):
        assert main(["predict", "--checkpoint", str(checkpoint), str(study), "--out", str(out),
                     "--dicom-seg"]) == 0
    with open(out / "volumes.csv", newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"study_s4", "study_s14"}
    classic_map, enhanced_map = (nib.load(out / f"{case}.nii.gz") for case in rows)
    assert enhanced_map.shape == classic_map.shape
    np.testing.assert_allclose(enhanced_map.affine, classic_map.affine, atol=1e-6)
    labels = np.asarray(enhanced_map.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(classic_map.dataobj))
    assert set(np.unique(labels)) == {0, 2, 4}  # not a trivial map
    for key in ("hemorrhage_ml", "SAH_ml", "IPH_ml"):
        assert float(rows["study_s14"][key]) == float(rows["study_s4"][key]) > 0
    # The copy's SEG refers to the one object, each frame to one of its frames, on whose
    # plane it lies; and holds, frame by frame, what the classic SEG holds on the same slice.
    seg_path = Path(rows["study_s14"]["dicom_seg"])
    seg = pydicom.dcmread(seg_path)
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == enhanced.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence] \
        == [enhanced.SOPInstanceUID]
    source_frames = enhanced.PerFrameFunctionalGroupsSequence
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        number = int(source.ReferencedFrameNumber)
        referenced.add(number)
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            source_frames[number - 1].PlanePositionSequence[0].ImagePositionPatient, atol=1e-3)
    assert referenced == set(range(1, len(slices) + 1))  # every slice holds some bleed
    numbers = list(range(1, len(slices) + 1))
    frames = hd.seg.segread(seg_path).get_pixels_by_source_frame(
        enhanced.SOPInstanceUID, numbers, segment_numbers=list(SUBTYPES), combine_segments=True,
        skip_overlap_checks=True)
    sources = {tuple(float(v) for v in ds.ImagePositionPatient): ds.SOPInstanceUID
               for ds in map(pydicom.dcmread, (study / "classic").iterdir())}
    at_position = [sources[tuple(float(v) for v in item.PlanePositionSequence[0]
                                 .ImagePositionPatient)] for item in source_frames]
    np.testing.assert_array_equal(
        frames, _frames(Path(rows["study_s4"]["dicom_seg"]), at_position, list(SUBTYPES)))
    assert {2, 4} <= set(np.unique(frames))


def test_tilted_series_with_uneven_gaps_gets_the_labels_where_its_slices_lie(tmp_path):
    slices, orientation = [0, 4, 8, 15, 22, 29], tilted(20.0)  # 4 mm gaps, then 7 mm
    # Rectangular pixels (rows 2.4 mm apart, columns 1.6 mm), so that swapping PixelSpacing's two
    # values misplaces them.
    write_series(tmp_path / "series", stack(slices, orientation), orientation=orientation,
                 tilt=20.0, pixel_spacing=(2.4, 1.6))
    sources = [pydicom.dcmread(path) for path in sorted((tmp_path / "series").iterdir())]
    # The label map on a regular 1 mm grid (RAS), as a resampling reader would give it: a box
    # of IPH and a box of SAH, each a range of voxel centres in mm.
    origin = np.array([-40.0, -50.0, -20.0])
    affine = np.eye(4)
    affine[:3, 3] = origin
    labels = np.zeros((80, 80, 70), np.uint8)
    iph = ((0.0, 20.0), (-30.0, -5.0), (-5.0, 12.0))
    sah = ((-25.0, -10.0), (-15.0, 10.0), (14.0, 40.0))
    for code, box in ((2, iph), (4, sah)):
        index = tuple(slice(int(lo - o), int(hi - o) + 1)
                      for (lo, hi), o in zip(box, origin, strict=True))
        labels[index] = code
    seg_path = write_dicom_seg(tmp_path / "series", labels, affine, SUBTYPES,
                               tmp_path / "tilted.seg.dcm")
    frames = _frames(seg_path, [ds.SOPInstanceUID for ds in sources], list(SUBTYPES))
    # Each pixel's place in RAS mm, from its headers, rounded to the nearest voxel centre of the
    # map (1 mm), decides its expected label.
    for ds, frame in zip(sources, frames, strict=True):
        ras = np.rint(pixel_positions(ds) * LPS_TO_RAS)
        expected = np.zeros(frame.shape, np.uint8)
        for code, box in ((2, iph), (4, sah)):
            inside = np.ones(frame.shape, bool)
            for axis, (lo, hi) in enumerate(box):
                inside &= (ras[..., axis] >= lo) & (ras[..., axis] <= hi)
            expected[inside] = code
        assert np.array_equal(frame, expected), ds.ImagePositionPatient
    assert {2, 4} <= set(np.unique(frames))  # both bleeds cross the slices
    _check_references(seg_path, sources)

    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(SUBTYPES.values())
    assert [s.SegmentNumber for s in seg.SegmentSequence] == list(SUBTYPES)
    for segment in seg.SegmentSequence:
        property_type, region = segment_codes()[segment.SegmentLabel]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == property_type.value
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        regions = [item.CodeValue for item in segment.get("AnatomicRegionSequence", [])]
        assert regions == ([region.value] if region is not None else [])


def test_a_series_with_nothing_predicted_gets_a_seg_of_empty_frames(tmp_path, caplog):
    write_series(tmp_path / "series", stack([0, 5, 10]))
    sources = [pydicom.dcmread(path) for path in sorted((tmp_path / "series").iterdir())]
    with caplog.at_level(logging.WARNING):
        seg_path = write_dicom_seg(tmp_path / "series", np.zeros((40, 40, 20), np.uint8),
                                   np.eye(4), {1: "hemorrhage"}, tmp_path / "empty.seg.dcm")
    assert caplog.records == []
    frames = _frames(seg_path, [ds.SOPInstanceUID for ds in sources], [1])
    assert frames.shape == (3, 32, 32) and not frames.any()
    _check_references(seg_path, sources)


# The codes checked (the module's docstring and docs/DOMAIN.md say where): class -> (segmented
# property type, anatomic region), SNOMED CT concept ids.
CHECKED_CODES = {
    "hemorrhage": ("1386000", None),
    "EDH": ("82999001", None),
    "IPH": ("274100004", None),
    "IVH": ("50960005", "35764002"),
    "SAH": ("21454007", None),
    "SDH": ("35486000", None),
}
# Those pydicom's dictionary (DICOM PS3.16's tables) holds, by its keyword.
PYDICOM_KEYWORDS = {"hemorrhage": ("IntracranialHemorrhage", None),
                    "IVH": ("Hemorrhage", "BrainVentricle")}


def test_segment_codes_are_the_checked_ones_and_pydicoms_where_it_has_them():
    known = segment_codes()
    assert {name: (kind.value, region.value if region is not None else None)
            for name, (kind, region) in known.items()} == CHECKED_CODES
    assert all(kind.scheme_designator == "SCT" for kind, _ in known.values())
    for name, keywords in PYDICOM_KEYWORDS.items():
        for code, keyword in zip(known[name], keywords, strict=True):
            if keyword is not None:
                pydicom_code = getattr(codes.SCT, keyword)
                assert (code.value, code.meaning) == (pydicom_code.value, pydicom_code.meaning)
    # The others are explicit codes because pydicom does not have them: were one of them added
    # to its dictionary, it should be taken from there.
    in_pydicom = {value for concepts in CONCEPTS["SCT"].values() for value in concepts}
    for name, (kind, _) in known.items():
        assert (kind.value in in_pydicom) == (name in PYDICOM_KEYWORDS), name
