"""DICOM as hospitals export it: studies searched and classified by their headers, series
converted by dcm2niix, tilted and unevenly spaced series put on a regular grid where the scanner
put them, compressed transfer syntaxes, and what is refused."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_series import (
    AXIAL,
    CT_IMAGE,
    MR_IMAGE,
    SECONDARY_CAPTURE,
    XRAY_DOSE_REPORT,
    check_against_headers,
    stack,
    tilted,
    write_enhanced,
    write_series,
)
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

import ichseg.data.dicom
from ichseg.data.dicom import _check_forms, read_dicom_series, read_scan, read_series, study_series
from ichseg.errors import UsageError
from ichseg.inference.predict import list_inputs

# The test series hold a linear HU ramp, not a head: no air or bone.
pytestmark = pytest.mark.filterwarnings("ignore:.*Hounsfield:UserWarning")


def _read_one(folder: Path):
    (series,), notes = study_series(folder)
    assert notes == []
    return read_series(series)


def test_series_lands_where_its_headers_put_it_whatever_the_file_order(tmp_path):
    positions = stack([0, 5, 10, 15, 20, 25])
    write_series(tmp_path / "ct", positions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # even slices, no tilt: nothing to warn about
        warnings.filterwarnings("ignore", ".*Hounsfield")
        volume = read_scan(tmp_path / "ct")
    assert volume.array.shape == (32, 32, 6)
    assert check_against_headers(volume, positions) == 6 * 30 * 30  # all but the edge pixels
    np.testing.assert_allclose(volume.spacing, [2.0, 2.0, 5.0])
    np.testing.assert_allclose(volume.header.get_qform(), volume.header.get_sform(), atol=1e-4)


@pytest.mark.parametrize("slices, degrees", [
    ([0, 5, 10, 20, 25, 30], 0.0),  # a missing slice
    ([0, 4, 8, 12, 19, 26, 33], 0.0),  # 4 mm then 7 mm, as head protocols do
    ([0, 5, 10, 15, 20], 15.0),  # gantry tilt
    ([0, 5, 10, 15, 20], -20.0),  # the other way (dcm2niix's de-tilted copy is mm off)
    ([0, 4, 8, 12, 19, 26, 33], -20.0),  # both
])
def test_tilted_and_uneven_series_land_on_a_regular_grid_where_the_scanner_put_them(
        tmp_path, slices, degrees):
    orientation = tilted(degrees) if degrees else AXIAL
    positions = stack(slices, orientation)
    write_series(tmp_path / "ct", positions, orientation=orientation, tilt=degrees)
    with pytest.warns(UserWarning, match="regular grid") as caught:
        volume = _read_one(tmp_path / "ct")
    said = " ".join(str(w.message) for w in caught)
    assert ("gantry tilt" in said) == bool(degrees)
    assert ("uneven slice gaps" in said) == (len(set(np.diff(slices))) > 1)
    # An orthogonal grid (one form holds it: sform and qform agree), with even steps along the
    # slice normal from the first slice to the last, no further apart than the smallest gap.
    axes = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)
    normal_gaps = np.diff(slices) * np.cos(np.deg2rad(degrees))
    assert volume.spacing[2] <= normal_gaps.min() + 1e-6
    assert (volume.array.shape[2] - 1) * volume.spacing[2] == pytest.approx(normal_gaps.sum())
    # Every voxel between two slices holds the HU of its place in the patient.
    assert check_against_headers(volume, positions, orientation) > 0.6 * volume.array.size


def test_uneven_series_takes_dcm2niix_equalised_grid(tmp_path):
    positions = stack([0, 4, 8, 12, 19, 26, 33])
    write_series(tmp_path / "ct", positions)
    with pytest.warns(UserWarning, match="uneven slice gaps"):
        volume = _read_one(tmp_path / "ct")
    out = tmp_path / "dcm2niix"
    out.mkdir()
    subprocess.run([dcm2niix.bin, "-l", "n", "-b", "n", "-f", "s", "-o", str(out),
                    str(tmp_path / "ct")], check=True, capture_output=True)
    equalised = nib.load(out / "s_Eq_1.nii")
    assert volume.array.shape == equalised.shape
    np.testing.assert_allclose(volume.affine, equalised.affine, atol=1e-3)
    np.testing.assert_allclose(volume.array, np.asarray(equalised.dataobj), atol=1.0)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1,
                                    JPEGLSLossless])
def test_compressed_series_are_read(tmp_path, syntax):
    positions = stack([0, 5, 10])
    write_series(tmp_path / "ct", positions, syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "ct").iterdir())).file_meta.TransferSyntaxUID \
        == syntax
    volume = _read_one(tmp_path / "ct")
    assert check_against_headers(volume, positions, tolerance=0.0) == 3 * 30 * 30


def test_study_folder_predicts_axial_ct_series_and_notes_the_rest(tmp_path):
    study = tmp_path / "study"
    write_series(study / "s2", stack([0, 5, 10, 15]), number=2)
    write_series(study / "deep" / "s3", stack([0, 1.25, 2.5, 3.75, 5.0]), number=3,
                 description="HEAD BONE")
    write_series(study / "scout", [(-30.0, 0.0, 40.0)], number=1, description="SCOUT",
                 orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(study / "dose", [(0.0, 0.0, 0.0)], number=999, description="DOSE INFO",
                 sop_class=SECONDARY_CAPTURE, modality="OT")
    report = pydicom.dcmread(next((study / "dose").iterdir()))
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = XRAY_DOSE_REPORT
    report.SeriesInstanceUID, report.SeriesNumber, report.Modality = "1.2.3.997", 997, "SR"
    for key in ("PixelData", "Rows", "Columns"):
        del report[key]
    report.save_as(study / "dose" / "report", enforce_file_format=True)
    (study / "notes.txt").write_text("not DICOM")

    cases, notes = list_inputs([study])
    assert [case_id for case_id, _ in cases] == ["study_s2", "study_s3"]
    assert len(notes) == 3 and all(note.count("\n") == 0 for note in notes)
    said = "\n".join(notes)
    for expected in ("series 1 'SCOUT'", "localizer", "series 997", "no image",
                     "series 999 'DOSE INFO'", "secondary capture"):
        assert expected in said
    # A folder of one series is named after the folder.
    (single,), notes = list_inputs([study / "deep"])
    assert single[0] == "deep" and notes == []


def test_a_single_slice_folder_has_nothing_to_predict(tmp_path):
    write_series(tmp_path / "one", stack([0]))
    with pytest.raises(UsageError, match="one holds no NIfTI file and no axial CT volume series: "
                                         "skipped series 2 .*a single slice"):
        list_inputs([tmp_path / "one"])


@pytest.mark.parametrize("what, kwargs, message", [
    ("mr", {"modality": "MR", "sop_class": MR_IMAGE}, "is MR, not CT"),
    ("short", {"positions": stack([0, 5])}, "has 2 slices, too few"),
])
def test_what_is_not_a_ct_volume_is_refused_naming_it(tmp_path, what, kwargs, message):
    kwargs.setdefault("positions", stack([0, 5, 10, 15]))
    write_series(tmp_path / "study" / what, **kwargs)
    write_series(tmp_path / "study" / "ct", stack([0, 5, 10, 15]), number=3)
    with pytest.raises(UsageError, match=f"series 2 'HEAD STD' in .*{what} .*{message}"):
        list_inputs([tmp_path / "study"])


def test_an_rgb_screenshot_stored_as_ct_is_refused(tmp_path):
    write_series(tmp_path / "rgb", stack([0, 5, 10]))
    for path in (tmp_path / "rgb").iterdir():
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()
        ds.save_as(path)
    with pytest.raises(UsageError, match="rgb .*is a colour \\(RGB\\) image"):
        list_inputs([tmp_path / "rgb"])


def test_repeated_positions_and_two_series_in_a_series_folder_are_refused(tmp_path):
    write_series(tmp_path / "twice", stack([0, 5, 5, 10]))
    with pytest.raises(UsageError, match="twice .*lie at the same position"):
        read_dicom_series(tmp_path / "twice")
    write_series(tmp_path / "two" / "a", stack([0, 5, 10]), number=2)
    write_series(tmp_path / "two" / "b", stack([0, 5, 10]), number=3)
    with pytest.raises(UsageError, match="two holds 2 axial CT volume series, not one"):
        read_scan(tmp_path / "two")


def test_rsna_12_bit_quirk_is_undone(tmp_path):
    # RSNA 2019: 12-bit unsigned pixels, intercept 0, values stored so that true HU are
    # ((value + 1000) mod 4096) - 1000. Store known HU that way and expect them back.
    hu = np.array([[-1000, -20], [40, 1500]], dtype=np.int32)
    write_series(tmp_path / "rsna", stack([0, 5, 10]), size=2)
    for path in (tmp_path / "rsna").iterdir():
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.mod(hu, 4096).astype(np.uint16).tobytes()
        ds.save_as(path)
    volume = _read_one(tmp_path / "rsna")
    for k in range(3):
        # dcm2niix flips the rows: the first NIfTI column is DICOM's last row.
        np.testing.assert_array_equal(volume.array[:, ::-1, k], hu.T)


def test_a_conversion_whose_qform_and_sform_disagree_is_said(tmp_path):
    write_series(tmp_path / "ct", stack([0, 5, 10]))
    (series,), _ = study_series(tmp_path / "ct")
    header = nib.Nifti1Header()
    header.set_sform(np.diag([2.0, 2.0, 5.0, 1.0]), code=1)
    header.set_qform(np.diag([2.0, 2.0, 4.0, 1.0]), code=1)
    with pytest.warns(UserWarning, match="ct .*has a qform that differs from its sform"):
        _check_forms(header, series)
    header.set_qform(np.diag([2.0, 2.0, 5.0, 1.0]), code=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_forms(header, series)


@pytest.mark.parametrize("slices, degrees", [
    ([0, 5, 10, 15, 20, 25], 0.0),  # dcm2niix's own grid
    ([0, 4, 8, 12, 19, 26, 33], -20.0),  # tilted with uneven gaps: regridded
])
def test_enhanced_ct_is_read_onto_the_grid_of_the_series_it_was_made_from(
        tmp_path, slices, degrees):
    orientation = tilted(degrees) if degrees else AXIAL
    positions = stack(slices, orientation)
    write_series(tmp_path / "classic", positions, orientation=orientation, tilt=degrees or None)
    converted = write_enhanced(tmp_path / "classic", tmp_path / "enhanced" / "ct.dcm")
    assert int(converted.NumberOfFrames) == len(slices)
    assert "ImagePositionPatient" not in converted  # the frames are placed by their groups
    with warnings.catch_warnings(record=True) as classic_said:
        warnings.simplefilter("always")
        classic = _read_one(tmp_path / "classic")
    # The object given as a file, and found in a folder.
    (series,), notes = study_series(tmp_path / "enhanced" / "ct.dcm")
    assert notes == [] and str(series).endswith(f"(1 file, {len(slices)} frames)")
    with warnings.catch_warnings(record=True) as enhanced_said:
        warnings.simplefilter("always")
        enhanced = read_series(series)
        from_folder = read_scan(tmp_path / "enhanced")
    # Regridded, and said so, exactly where the classic series is.
    for said in (classic_said, enhanced_said):
        assert any("regular grid" in str(w.message) for w in said) == bool(degrees)
    for volume in (enhanced, from_folder):
        assert volume.array.shape == classic.array.shape
        np.testing.assert_allclose(volume.affine, classic.affine, atol=1e-6)
        np.testing.assert_array_equal(volume.array, classic.array)
    assert check_against_headers(enhanced, positions, orientation) > 0.6 * enhanced.array.size


def test_a_study_lists_a_classic_series_and_its_enhanced_copy_as_two_cases(tmp_path):
    write_series(tmp_path / "study" / "classic", stack([0, 5, 10, 15]), number=2)
    write_enhanced(tmp_path / "study" / "classic", tmp_path / "study" / "enhanced" / "ct.dcm",
                   number=12)
    cases, notes = list_inputs([tmp_path / "study"])
    assert [case_id for case_id, _ in cases] == ["study_s2", "study_s12"] and notes == []
    assert [len(series.slices) for _, series in cases] == [4, 4]
    # An Enhanced CT file given itself is a case named after the file.
    (case,), _ = list_inputs([tmp_path / "study" / "enhanced" / "ct.dcm"])
    assert case[0] == "ct" and case[1].files == [tmp_path / "study" / "enhanced" / "ct.dcm"]


def test_other_multi_frame_objects_are_skipped_or_refused_as_before(tmp_path):
    write_series(tmp_path / "classic", stack([0, 5, 10, 15]))
    # A multi-frame secondary capture (a screenshot series) is skipped.
    write_enhanced(tmp_path / "classic", tmp_path / "study" / "sc.dcm", number=20,
                   sop_class="1.2.840.10008.5.1.4.1.1.7.3")
    write_series(tmp_path / "study" / "ct", stack([0, 5, 10]), number=3)
    (case,), (note,) = list_inputs([tmp_path / "study"])
    assert case[0] == "study" and "series 20" in note and "secondary capture" in note
    # Multi-frame objects of another modality, or of a class ichseg does not read, are refused.
    write_enhanced(tmp_path / "classic", tmp_path / "mr" / "mr.dcm",
                   sop_class="1.2.840.10008.5.1.4.1.1.4.1", modality="MR")
    with pytest.raises(UsageError, match="series 12 .* is MR, not CT"):
        list_inputs([tmp_path / "mr"])
    write_enhanced(tmp_path / "classic", tmp_path / "old" / "ct.dcm", sop_class=CT_IMAGE)
    with pytest.raises(UsageError, match="ct.dcm is a multi-frame image but series 12 .*is not "
                                         "one Enhanced CT object"):
        list_inputs([tmp_path / "old"])


def test_a_series_larger_than_data_max_voxels_is_refused_before_conversion(tmp_path,
                                                                           monkeypatch):
    write_series(tmp_path / "classic", stack([0, 5, 10, 15]))
    write_enhanced(tmp_path / "classic", tmp_path / "enhanced.dcm")

    def converted(*args):
        raise AssertionError("dcm2niix ran")

    monkeypatch.setattr(ichseg.data.dicom, "_convert", converted)
    for source in (tmp_path / "classic", tmp_path / "enhanced.dcm"):
        with pytest.raises(UsageError, match=r"series .* is 32 x 32 x 4 voxels \(16.4 KB as "
                                             r"float32\), more than data.max_voxels \(4095\)"):
            read_scan(source, max_voxels=32 * 32 * 4 - 1)
    # Uneven gaps are counted as the regular grid that covers them: 0.05 mm apart at most.
    write_series(tmp_path / "stray", stack([0, 0.05, 5, 10]))
    with pytest.raises(UsageError, match=r"stray \(4 files\), on the regular grid its uneven "
                                         r"gaps need, is 32 x 32 x 201 voxels"):
        read_scan(tmp_path / "stray", max_voxels=32 * 32 * 200)
