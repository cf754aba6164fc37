"""The cranial cavity (data/cavity.py): on phantoms, whose cavity is known by construction, on a
real head CT (tests/data/), in the preprocessed-case cache, and in predict, which drops what it
predicts outside the cavity."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_predict import _checkpoint, one_thread  # noqa: F401 (autouse)

from ichseg.cli import main
from ichseg.config import DataConfig
from ichseg.data.cache import PreprocessedCache
from ichseg.data.cavity import Cavity, find_cavity
from ichseg.data.dicom import find_series, read_series
from ichseg.data.io import read_nifti, write_nifti
from ichseg.data.layouts import Case
from ichseg.data.synth import EDH, SDH, TISSUES, intracranial_mask, make_case
from ichseg.inference.predict import predict_cases

DATA = Path(__file__).parent / "data"
# Below the skull base: nothing of these is cranial cavity.
NECK = [TISSUES[name] for name in ("muscle", "vessel", "bone", "marrow", "spinal_canal")]


def voxel_ml(affine: np.ndarray) -> float:
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


# (seed, shape, spacing): thick slices with fine pixels, thin slices; each scan starts in the
# neck and has its own gantry tilt and head pose.
PHANTOMS = [
    pytest.param(100, (288, 288, 36), (0.8, 0.8, 5.0), marks=pytest.mark.slow),  # 15 s: drawing
    (101, (160, 160, 170), (1.4, 1.4, 1.0)),
    (102, (128, 128, 36), (1.8, 1.8, 5.0)),
]


@pytest.mark.parametrize("seed, shape, spacing", PHANTOMS)
def test_phantom_cavity_is_the_constructed_one_and_holds_every_bleed(seed, shape, spacing):
    case = make_case(seed, shape, spacing, neck_share=1.0)
    cavity = find_cavity(case.hu, case.affine)
    assert cavity.reason is None and cavity.mask.shape == case.hu.shape
    truth = intracranial_mask(case.tissues)
    truth_ml = truth.sum() * voxel_ml(case.affine)
    # The whole space inside the inner table, and a little more: the inner table's
    # partial-volume rim, where the outer voxels of an epidural haematoma lie.
    assert (truth & ~cavity.mask).sum() < 0.01 * truth.sum()
    assert truth_ml < cavity.volume_ml(case.affine) < 1.06 * truth_ml
    assert not ((case.label > 0) & ~cavity.mask).any()
    # Nothing of the scalp haematoma, and nothing below the foramen magnum: no slice under the
    # constructed cavity's lowest, and of the neck's tissues only the odd voxel beside it.
    assert not (cavity.mask & (case.tissues == TISSUES["scalp_haematoma"])).any()
    assert cavity.mask.any(axis=(0, 1)).argmax() >= truth.any(axis=(0, 1)).argmax()
    assert (cavity.mask & np.isin(case.tissues, NECK)).sum() < 0.003 * cavity.mask.sum()


def test_craniectomy_side_stays_in_the_cavity():
    """A bone flap removed over one hemisphere: the brain under it is cavity (it reaches
    towards the scalp, up to the scalp's thickness), and so is every bleed."""
    case = make_case(102, (128, 128, 36), (1.8, 1.8, 5.0), neck_share=1.0)
    truth = intracranial_mask(case.tissues)
    x = np.arange(case.hu.shape[0])[:, None, None]
    z = np.arange(case.hu.shape[2])[None, None, :]
    xs = np.flatnonzero(truth.any(axis=(1, 2)))
    zs = np.flatnonzero(truth.any(axis=(0, 1)))
    side = ((x > xs.min() + 0.7 * (xs.max() - xs.min()))
            & (z > zs.min() + 0.35 * (zs.max() - zs.min()))
            & (z < zs.min() + 0.9 * (zs.max() - zs.min())))
    hu = case.hu.copy()
    hu[side & (hu > 300)] = 35  # the flap gone, soft tissue in its place
    cavity = find_cavity(hu, case.affine)
    assert (truth & side & ~cavity.mask).sum() < 0.01 * (truth & side).sum()
    assert not ((case.label > 0) & ~cavity.mask).any()
    assert not (cavity.mask & (case.hu < -500)).any()  # not out into the air


def test_no_skull_gives_none_with_a_reason():
    case = make_case(5, (128, 128, 24), (1.6, 1.6, 5.0))
    soft = np.where(case.hu > 200, 40, case.hu).astype(np.int16)  # the bone made soft tissue
    found = find_cavity(soft, case.affine)
    assert found.mask is None and "300 HU" in found.reason
    assert found.volume_ml(case.affine) == 0.0
    # Clipped to a brain window as well: bone's blurred edge and blood saturate, but no skull.
    found = find_cavity(brain_window(soft), case.affine)
    assert found.mask is None and "without a saturated skull" in found.reason
    # Bone that encloses nothing: a slab, as a table or a body CT's spine might show.
    slab = np.full((96, 96, 20), -1000, np.int16)
    slab[20:70, 40:50, :] = 800
    found = find_cavity(slab, np.diag([2.0, 2.0, 5.0, 1.0]))
    assert found == Cavity(None, found.reason) and "encloses" in found.reason


def brain_window(hu: np.ndarray, low: float = 0.0, high: float = 80.0) -> np.ndarray:
    """`hu` as a public ICH dataset's export holds it: clipped to the brain window, stored as
    8 bits and turned back into HU."""
    code = np.round((np.clip(hu, low, high) - low) / (high - low) * 255.0)
    return (code * (high - low) / 255.0 + low).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def ge_tilted():
    """A patient's head CT with an 18.5 degree gantry tilt and slices 4.2 then 7.4 mm apart
    (tests/data/head_ct_ge_tilted/README.md), read as predict reads it: resampled onto a regular
    tilted grid of 1.08 mm slices, whose slices 0-12 show the atlas, the dens and the foramen
    magnum with the medulla in it (looked at slice by slice)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tilt and the uneven gaps are told
        return read_series(find_series(DATA / "head_ct_ge_tilted")[0])


def test_real_head_ct_cavity_is_adult_sized_and_stops_at_the_foramen_magnum(ge_tilted):
    volume = ge_tilted
    cavity = find_cavity(volume.array, volume.affine)
    assert cavity.reason is None
    assert 1100 < cavity.volume_ml(volume.affine) < 1800
    slices = np.flatnonzero(cavity.mask.any(axis=(0, 1)))
    assert slices.min() > 12
    # Up to the vertex, where the last slices cut the skull's dome (the scan's top is air).
    assert slices.max() > 0.8 * volume.array.shape[2]
    # Of the bone, only the inner table's partial-volume rim.
    assert (volume.array[cavity.mask] > 1000).mean() < 0.01
    # The same scan on pixels half as large (each one repeated, as the original 0.49 mm
    # series was before the test data's 2 x 2 averaging) gives the same cavity.
    fine = volume.array.repeat(2, axis=0).repeat(2, axis=1)
    affine = volume.affine.copy()
    affine[:3, :2] /= 2.0
    fine_ml = find_cavity(fine, affine).volume_ml(affine)
    assert fine_ml == pytest.approx(cavity.volume_ml(volume.affine), rel=0.03)


def extra_axial_blood(case) -> bool:
    return bool(np.isin(case.label, (EDH, SDH)).any())


def scalp_and_extra_axial_blood(case) -> bool:
    return bool((case.tissues == TISSUES["scalp_haematoma"]).any()) and extra_axial_blood(case)


def first_case_with(wanted, shape, spacing, start):
    """The first phantom from seed `start` of this scan (from the neck up) that `wanted` holds
    for, told from a preview of the same field of view on pixels four times as large (the same
    head and lesions, drawn in a tenth of the time): a test keeps a case with what it needs when
    the phantoms change."""
    preview_shape = (-(-shape[0] // 4), -(-shape[1] // 4), shape[2])
    preview_spacing = (spacing[0] * shape[0] / preview_shape[0],
                       spacing[1] * shape[1] / preview_shape[1], spacing[2])
    for seed in range(start, start + 50):
        if wanted(make_case(seed, preview_shape, preview_spacing, neck_share=1.0)):
            case = make_case(seed, shape, spacing, neck_share=1.0)
            assert wanted(case), f"seed {seed}: the preview and the scan disagree"
            return case
    raise AssertionError(f"no phantom from seed {start} holds {wanted.__name__}")


# (what the case holds, the seed to look from, the share of bleed voxels the clipped scan's
# cavity may leave out): epidural and subdural blood at the window's top against the inner table
# is fused with the saturated skull, and its outer part lies beyond the rim (module doc, Limits).
# Measured: seed 101's subdural haematoma, 104 of 22,087 bleed voxels (0.5 %), some of them in a
# crevice of the skull base; seed 21's epidural and subdural haematomas beside a scalp
# haematoma, 1,126 of 64,172 (1.8 %; 1,108 of them epidural).
@pytest.mark.parametrize("wanted, start, missed_share", [
    (extra_axial_blood, 101, 0.01), (scalp_and_extra_axial_blood, 15, 0.02)])
def test_brain_window_export_phantom_keeps_the_cavity_and_its_bleeds(wanted, start, missed_share):
    """Clipped to [0, 80] HU and stored as 8 bits, no voxel is bone (the skull, like some blood,
    sits at the window's top): the cavity is found from the saturated ring instead."""
    case = first_case_with(wanted, (160, 160, 170), (1.4, 1.4, 1.0), start)
    bleed = case.label > 0
    assert bleed.any()
    unclipped = find_cavity(case.hu, case.affine)
    clipped = find_cavity(brain_window(case.hu), case.affine)
    assert clipped.reason is None
    assert dice(clipped.mask, unclipped.mask) > 0.9
    assert clipped.volume_ml(case.affine) == pytest.approx(
        unclipped.volume_ml(case.affine), rel=0.1)
    assert (bleed & ~clipped.mask).sum() <= missed_share * bleed.sum()
    assert not (clipped.mask & (case.tissues == TISSUES["scalp_haematoma"])).any()
    lowest = unclipped.mask.any(axis=(0, 1)).argmax()
    assert not clipped.mask[..., :lowest].any()


def test_second_real_head_ct_cavity_stops_at_the_foramen_magnum():
    """VTK's headsq (tests/data/head_ct_vtk_headsq/README.md): a real head CT of 3.2 mm pixels
    and 1.5 mm slices from a little above the orbital roofs down to the neck, so the cavity
    holds the lower half of a cranium (the anterior, middle and posterior fossae and what lies
    above them up to the scan's top, where the ring is still closed; 432 mL found): 300-700 mL.
    Slice 29 (counted from the top, from 0) shows the foramen magnum round the medulla, the
    slices below it the atlas and the dens (looked at slice by slice)."""
    folder = DATA / "head_ct_vtk_headsq"
    stored = np.stack([np.fromfile(folder / f"quarter.{i}", "<i2").reshape(64, 64)
                       for i in range(1, 94)], axis=-1)
    hu = (stored.transpose(1, 0, 2) - 1024).astype(np.int16)  # (row, column) to (X, Y)
    # Columns run across, rows from the face back, slices from the top down.
    affine = np.diag([3.2, -3.2, -1.5, 1.0])
    cavity = find_cavity(hu, affine)
    assert cavity.reason is None
    assert 300 < cavity.volume_ml(affine) < 700
    slices = np.flatnonzero(cavity.mask.any(axis=(0, 1)))
    assert slices.min() == 0 and slices.max() < 29
    assert (hu[cavity.mask] > 1000).mean() < 0.01


def test_brain_window_export_of_the_real_head_ct(ge_tilted):
    clipped_hu = brain_window(ge_tilted.array)
    assert clipped_hu.max() < 300
    unclipped = find_cavity(ge_tilted.array, ge_tilted.affine)
    clipped = find_cavity(clipped_hu, ge_tilted.affine)
    assert clipped.reason is None
    assert 1100 < clipped.volume_ml(ge_tilted.affine) < 1800
    assert dice(clipped.mask, unclipped.mask) > 0.9
    assert clipped.volume_ml(ge_tilted.affine) == pytest.approx(
        unclipped.volume_ml(ge_tilted.affine), rel=0.1)
    assert np.flatnonzero(clipped.mask.any(axis=(0, 1))).min() > 12  # the foramen magnum


def test_cache_stores_the_cavity_on_the_prepared_grid(tmp_path):
    case = make_case(6, (160, 160, 28), (1.3, 1.3, 5.0))
    image, label = tmp_path / "c_0000.nii.gz", tmp_path / "c.nii.gz"
    write_nifti(image, case.hu, case.affine)
    write_nifti(label, case.label, case.affine)
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"), spacing=[1.3, 1.3, 5.0])
    prepared = PreprocessedCache(cfg).load_case(Case("c", image, label))
    assert prepared.cavity is not None and prepared.cavity.dtype == bool
    assert prepared.cavity.shape == prepared.hu.shape
    native = find_cavity(case.hu, case.affine).volume_ml(case.affine)
    assert abs(prepared.cavity.sum() * np.prod(cfg.spacing) / 1000.0 - native) < 0.03 * native
    assert not (prepared.label.astype(bool) & ~prepared.cavity).any()


@pytest.fixture(scope="module")
def everywhere(tmp_path_factory) -> Path:
    """A tiny model that calls every voxel of the head's box hemorrhage."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "everywhere.pt", -5.0, 5.0)


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def scalp_and_extra_axial_case():
    """A scan from the neck up with a scalp haematoma and epidural or subdural blood against the
    inner table, on 5 mm slices."""
    case = first_case_with(scalp_and_extra_axial_blood, (144, 144, 40), (1.6, 1.6, 5.0), 15)
    assert (case.tissues == TISSUES["scalp_haematoma"]).any()
    assert np.isin(case.label, (EDH, SDH)).any()
    return case


@pytest.mark.xfail(strict=True, reason="a known limit of data/cavity.py: 5 subdural voxels of "
                   "this phantom lie in a notch beside a bony ridge on 5 mm slices, which the "
                   "closing seals; every fix tried grew the real CT's cavity by 60-170 mL")
def test_every_extra_axial_voxel_lies_inside_the_cavity(scalp_and_extra_axial_case):
    case = scalp_and_extra_axial_case
    cavity = find_cavity(case.hu, case.affine).mask
    assert cavity[np.isin(case.label, (EDH, SDH))].all()


def test_predict_drops_blood_outside_the_cavity_and_keeps_extra_axial_blood(
        tmp_path, everywhere, scalp_and_extra_axial_case):
    # A model that calls everything blood predicts all of it: predict keeps exactly what the
    # cavity holds (whether the cavity holds every extra-axial voxel is the test above).
    case = scalp_and_extra_axial_case
    haematoma = case.tissues == TISSUES["scalp_haematoma"]
    extra_axial = np.isin(case.label, (EDH, SDH))
    image = write_nifti(tmp_path / "in" / "head.nii.gz", case.hu, case.affine)
    scan = read_nifti(image)  # as predict reads it (the header's float32 affine moves the rim)
    cavity = find_cavity(scan.array, scan.affine).mask

    results = predict_cases(everywhere, [image], tmp_path / "out", quiet=True)
    kept = np.asarray(nib.load(tmp_path / "out" / "head.nii.gz").dataobj) > 0
    assert kept[extra_axial & cavity].all()
    assert not kept[~cavity].any()
    # The known notch (measured: 11 of 9,731 voxels as predict reads the file), no more.
    assert (~cavity[extra_axial]).mean() < 0.002
    assert not kept[haematoma].any()
    assert not kept[..., :intracranial_mask(case.tissues).any(axis=(0, 1)).argmax()].any()
    row = _read_rows(tmp_path / "out" / "volumes.csv")["head"]
    dropped = float(row["outside_cavity_ml"])
    assert dropped == pytest.approx(results[0]["outside_cavity_ml"])

    # Asked to keep it all, the neck and the scalp stay predicted: as much more as was dropped.
    assert main(["predict", "--checkpoint", str(everywhere), str(image), "--out",
                 str(tmp_path / "all"), "--keep-outside-cavity"]) == 0
    whole = np.asarray(nib.load(tmp_path / "all" / "head.nii.gz").dataobj) > 0
    assert whole[haematoma].all() and (kept <= whole).all()
    assert (whole.sum() - kept.sum()) * voxel_ml(case.affine) == pytest.approx(dropped)
    assert _read_rows(tmp_path / "all" / "volumes.csv")["head"]["outside_cavity_ml"] == ""


def test_predict_keeps_the_prediction_where_no_skull_is_found(tmp_path, everywhere):
    case = make_case(16, (96, 96, 24), (2.4, 2.4, 5.0))
    boneless = np.where(case.hu > 200, 40, case.hu).astype(np.int16)
    image = write_nifti(tmp_path / "boneless.nii.gz", boneless, case.affine)
    with pytest.warns(UserWarning, match=r"cranial cavity: .*boneless\.nii\.gz: no voxel"):
        results = predict_cases(everywhere, [image], tmp_path / "out", quiet=True)
    assert results[0]["outside_cavity_ml"] is None
    labels = np.asarray(nib.load(tmp_path / "out" / "boneless.nii.gz").dataobj)
    assert labels[boneless > -500].all()
