"""Reading and writing scans: NIfTI affines through a round trip, labels, bad files (DICOM:
test_dicom.py; predict's inputs: test_predict.py)."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.data.io import read_label, read_nifti, write_nifti
from ichseg.errors import UsageError

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _ct_like(shape=(12, 10, 6)) -> np.ndarray:
    """Int16 HU with air and bone, so the reader's not-HU warning stays quiet."""
    hu = np.full(shape, 40, dtype=np.int16)
    hu[0] = -1000
    hu[-1] = 1200
    return hu


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


# ------------------------------------------------------------------------------------------ NIfTI

@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"])
def test_round_trip_keeps_voxels_affine_orientation_and_codes(name, tmp_path):
    original = nib.load(NIBABEL_DATA / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these are MR and phantom images, not CT in HU
        volume = read_nifti(NIBABEL_DATA / name)
        np.testing.assert_array_equal(volume.affine, original.affine)
        out = write_nifti(tmp_path / "copy.nii.gz", volume.array, volume.affine, like=volume)
        again = read_nifti(out)
    np.testing.assert_array_equal(again.array, np.asarray(original.dataobj, dtype=np.float32))
    np.testing.assert_allclose(again.affine, original.affine, atol=1e-6)
    assert nib.aff2axcodes(again.affine) == nib.aff2axcodes(original.affine)
    written = nib.load(out).header
    for code in ("sform_code", "qform_code"):
        assert int(written[code]) == int(original.header[code])
    assert sorted(os.listdir(tmp_path)) == ["copy.nii.gz"]  # no temp file left behind


def test_oblique_volume_keeps_its_affine(tmp_path):
    # example4d's affine is LAS with a rotation about x: neither axis-aligned nor RAS.
    source = nib.load(NIBABEL_DATA / "example4d.nii.gz")
    assert not np.allclose(source.affine[1, 2], 0)
    first = nib.Nifti1Image(np.asarray(source.dataobj[..., 0]), source.affine, source.header)
    nib.save(first, tmp_path / "first.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_nifti(tmp_path / "first.nii")
        again = read_nifti(write_nifti(tmp_path / "out.nii", volume.array, volume.affine,
                                       like=tmp_path / "first.nii"))
    np.testing.assert_allclose(again.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(again.affine) == ("L", "A", "S")
    np.testing.assert_allclose(again.spacing, source.header.get_zooms()[:3], rtol=1e-5)


def test_without_template_both_codes_say_scanner(tmp_path):
    out = write_nifti(tmp_path / "a.nii.gz", _ct_like(), np.diag([0.5, 0.5, 5.0, 1.0]))
    header = nib.load(out).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (1, 1)
    np.testing.assert_array_equal(read_nifti(out).array, _ct_like())


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = _save(tmp_path / "a.nii.gz", _ct_like())
    before = target.read_bytes()

    def half_written(self, filename, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(target, _ct_like() + 1, np.eye(4))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.nii.gz"]


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    path = _save(tmp_path / "a.nii.gz", _ct_like()[..., None])
    assert read_nifti(path).array.shape == (12, 10, 6)


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 6, 2)])
def test_2d_and_true_4d_are_refused_naming_the_file(tmp_path, shape):
    path = _save(tmp_path / "odd.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(UsageError, match="odd.nii.gz.*single 3D volume"):
        read_nifti(path)


def test_nans_are_refused_naming_the_file():
    # A file nibabel ships with NaNs outside its resampled field of view.
    with pytest.raises(UsageError, match="resampled_anat_moved.nii holds NaN"):
        read_nifti(NIBABEL_DATA / "resampled_anat_moved.nii")


@pytest.mark.parametrize("kind", ["nifti2", "big-endian", "two gzip members", "scaled"])
def test_gzipped_files_read_as_nibabel_reads_them(tmp_path, kind):
    # A .nii.gz is inflated in one call, not through nibabel's stream: every header variant
    # must still give nibabel's voxels (scaling applied) and affine.
    hu = _ct_like((20, 16, 7))
    hu[5:9, 4:8, 2:5] = 75
    affine = np.array([[0, 0, -5.0, 10], [-0.9, 0, 0, 3], [0, 0.8, 0, -7], [0, 0, 0, 1]])
    path = tmp_path / "scan.nii.gz"
    if kind == "nifti2":
        nib.save(nib.Nifti2Image(hu, affine), path)
    elif kind == "big-endian":
        header = nib.Nifti1Header(endianness=">")
        nib.save(nib.Nifti1Image(hu.astype(">i2"), affine, header), path)
    elif kind == "two gzip members":  # what `cat a.gz b.gz` or some streaming writers give
        raw = gzip.decompress(_save(path, hu, affine).read_bytes())
        path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    else:
        image = nib.Nifti1Image(hu, affine)
        image.header.set_slope_inter(0.5, -10.0)
        nib.save(image, path)
    expected = nib.load(path)
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.array, np.asarray(expected.get_fdata(), np.float32))
    np.testing.assert_array_equal(volume.affine, expected.affine)
    if kind != "scaled":
        np.testing.assert_array_equal(volume.array, hu)


def test_truncated_and_foreign_files_are_refused_naming_the_file(tmp_path):
    whole = _save(tmp_path / "whole.nii.gz", _ct_like((40, 40, 20))).read_bytes()
    plain = _save(tmp_path / "whole.nii", _ct_like((40, 40, 20))).read_bytes()
    # Cut among the voxels, and cut inside the header, where nibabel sees only a short header.
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "cut_header.nii.gz").write_bytes(whole[:60])
    (tmp_path / "cut.nii").write_bytes(plain[: len(plain) // 2])
    (tmp_path / "cut_header.nii").write_bytes(plain[:200])
    (tmp_path / "text.nii.gz").write_text("not an image")
    (tmp_path / "text.nii").write_text("not an image either" * 30)
    for name in ("cut.nii.gz", "cut_header.nii.gz", "cut.nii", "cut_header.nii"):
        with pytest.raises(UsageError, match=f"{name} is truncated"):
            read_nifti(tmp_path / name)
    for name in ("text.nii.gz", "text.nii"):
        with pytest.raises(UsageError, match=f"{name} is not a readable NIfTI file"):
            read_nifti(tmp_path / name)
    with pytest.raises(UsageError, match="missing.nii.gz does not exist"):
        read_nifti(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("claimed", [(4096, 4096, 4096), (300, 300, 100)])
def test_a_header_that_claims_more_than_the_file_holds_is_refused_without_allocating(
        tmp_path, suffix, claimed):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(claimed)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    # The header, the extension flag and a few kB of voxels: all the file there is.
    raw = header.binaryblock + b"\0" * 4 + np.full(2000, 40, np.int16).tobytes()
    path = tmp_path / f"liar{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match=f"liar{suffix} is truncated or its header is "
                                             r"damaged: the header claims \("):
            read_nifti(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the smaller claim is 18 MB, which nibabel would allocate first


def _sparse_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """An honest int16 NIfTI file of `shape`: its header and then every voxel's bytes, as a
    sparse file (zeros the file system does not store), so 16 GiB cost no disk."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)
        f.truncate(352 + 2 * int(np.prod(shape)))
    return path


def test_a_scan_larger_than_data_max_voxels_is_refused_from_its_header(tmp_path):
    # 2,048 cubed: 16 GiB of int16 in the file, 32 GiB as float32.
    huge = _sparse_nifti(tmp_path / "huge.nii", (2048, 2048, 2048))
    tracemalloc.start()
    try:
        for reader in (read_nifti, read_label):
            with pytest.raises(UsageError, match=r"huge.nii is 2048 x 2048 x 2048 voxels "
                                                 r"\(34.4 GB as float32\), more than "
                                                 r"data.max_voxels \(2097152000\)"):
                reader(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # Below the limit it is read; a smaller limit refuses a .nii.gz before inflating it.
    assert read_label(_sparse_nifti(tmp_path / "small.nii", (8, 8, 4))).array.shape == (8, 8, 4)
    small = _save(tmp_path / "small.nii.gz", _ct_like())
    with pytest.raises(UsageError, match=r"small.nii.gz is 12 x 10 x 6 voxels .* more than "
                                         r"data.max_voxels \(719\)"):
        read_nifti(small, max_voxels=719)
    assert read_nifti(small, max_voxels=720).array.shape == (12, 10, 6)


def test_inspect_training_and_predict_refuse_a_scan_over_the_limit_naming_it(
        tmp_path, write_small_case, capsys):
    from test_predict import _checkpoint

    from ichseg.cli import main
    from ichseg.config import preset_config
    from ichseg.data.cache import load_cases
    from ichseg.data.layouts import find_cases

    root = tmp_path / "data"
    write_small_case(root / "images" / "a.nii.gz", root / "labels" / "a.nii.gz")
    data_cfg = preset_config("tiny").data
    data_cfg.prepare_workers = 1  # in this process
    shape = read_nifti(root / "images" / "a.nii.gz").array.shape
    data_cfg.max_voxels = int(np.prod(shape)) - 1
    with pytest.raises(UsageError, match=f"a.nii.gz is {shape[0]} x .* more than "
                                         f"data.max_voxels \\({data_cfg.max_voxels}\\)"):
        load_cases(data_cfg, find_cases(root).cases, progress=False)
    _sparse_nifti(root / "images" / "b.nii", (2048, 2048, 2048))
    (root / "labels" / "b.nii").symlink_to(root / "images" / "b.nii")
    assert main(["inspect", str(root)]) == 2
    assert "b.nii is 2048 x 2048 x 2048 voxels" in capsys.readouterr().err
    checkpoint = _checkpoint(tmp_path / "model.pt", 5.0, -5.0)
    assert main(["predict", "--checkpoint", str(checkpoint), str(root / "images" / "b.nii"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "b.nii is 2048 x 2048 x 2048 voxels" in capsys.readouterr().err
    assert not (tmp_path / "out" / "b.nii.gz").exists()


def test_values_that_are_not_hu_warn_but_are_read(tmp_path):
    path = _save(tmp_path / "mr.nii.gz", np.linspace(0, 100, 720).reshape(12, 10, 6))
    with pytest.warns(UserWarning, match="mr.nii.gz does not look like CT"):
        volume = read_nifti(path)
    assert volume.array.dtype == np.float32 and volume.array.max() == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nifti(_save(tmp_path / "ct.nii.gz", _ct_like()))


def test_read_label_gives_uint8_codes_and_refuses_non_codes(tmp_path):
    codes = np.zeros((6, 6, 4), np.float32)
    codes[1, 1, 1], codes[2, 2, 2] = 5.0, 255.0
    label = read_label(_save(tmp_path / "ok.nii.gz", codes))
    assert label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.array, codes.astype(np.uint8))
    codes[3, 3, 3] = 0.5
    with pytest.raises(UsageError, match="half.nii.gz holds fractional values"):
        read_label(_save(tmp_path / "half.nii.gz", codes))
    with pytest.raises(UsageError, match="big.nii.gz holds values from 0 to 315"):
        read_label(_save(tmp_path / "big.nii.gz", np.arange(0, 320, 5, dtype=np.int16)
                         .reshape(4, 4, 4)))
