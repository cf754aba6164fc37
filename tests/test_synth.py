"""Synthetic head CT: HU per tissue and subtype, where each subtype lies, determinism, files, CLI.

The HU bands are the issue's (air -1000, skull 700-1600, brain 20-45, CSF 0-15, acute blood
50-90), written out here rather than read from the generator, so the tests hold it to them.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ichseg.cli import main
from ichseg.data.synth import (
    EDH,
    IPH,
    IVH,
    SAH,
    SDH,
    TISSUES,
    intracranial_mask,
    make_case,
    resolve_geometry,
    write_dataset,
)
from ichseg.errors import UsageError

SHAPE, SPACING = (96, 96, 24), (2.4, 2.4, 5.0)  # a 230 mm field of view, coarse enough to be quick
FINE_SHAPE, FINE_SPACING = (192, 192, 16), (1.2, 1.2, 5.0)
# Clean cases in 1 mm slices: one drawing plane per slice, so a voxel's HU is its tissue's own.
THIN_SHAPE, THIN_SPACING = (64, 64, 150), (3.6, 3.6, 1.0)
CASES, CLEAN_CASES = 20, 8

BRAIN_HU, CSF_HU, SKULL_HU, BLOOD_HU = (20, 45), (0, 15), (700, 1600), (50, 90)
AIR, SCALP, SKULL, GREY, WHITE, CSF, VENTRICLE, FAT, EYE = (
    TISSUES[n] for n in ("air", "scalp", "skull", "grey", "white", "csf", "ventricle", "fat", "eye"))
MUSCLE, VESSEL, SINUS, HAEMATOMA, BONE, MARROW, CANAL = (
    TISSUES[n] for n in ("muscle", "vessel", "venous_sinus", "scalp_haematoma", "bone", "marrow",
                         "spinal_canal"))
SUBTYPES = {EDH: "EDH", IPH: "IPH", IVH: "IVH", SAH: "SAH", SDH: "SDH"}
NEIGHBOURS = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def cases():
    """The first CASES cases of seed 0, as scanned (blurred, noisy)."""
    return [make_case(0, SHAPE, SPACING, index=k) for k in range(CASES)]


@pytest.fixture(scope="module")
def clean_cases():
    """CLEAN_CASES cases as drawn in 1 mm slices, before the scanner's blur, noise and streaks."""
    return [make_case(0, THIN_SHAPE, THIN_SPACING, index=k, clean=True)
            for k in range(CLEAN_CASES)]


def _lesions(case, subtype):
    """The connected components of one subtype's label, as boolean masks."""
    components, count = ndimage.label(case.label == subtype, structure=NEIGHBOURS)
    return [components == k for k in range(1, count + 1)]


def _core_hu(case, *tissues):
    """HU of the blood-free voxels of `tissues` one voxel away from any other tissue, beyond the
    reach of the partial-volume blur."""
    mask = np.isin(case.tissues, tissues) & (case.label == 0)
    return case.hu[ndimage.binary_erosion(mask, NEIGHBOURS)].astype(float)


def _within(values, band):
    return values.size > 0 and band[0] <= values.min() and values.max() <= band[1]


def test_clean_tissue_hu_lies_in_the_bands(clean_cases):
    for clean in clean_cases:
        normal = clean.label == 0
        hu, tissues = clean.hu, clean.tissues
        assert np.all(hu[(tissues == AIR) & normal] == -1000)
        assert _within(hu[(tissues == SKULL) & normal], SKULL_HU)
        grey, white = hu[(tissues == GREY) & normal], hu[(tissues == WHITE) & normal]
        assert _within(grey, BRAIN_HU) and _within(white, BRAIN_HU)
        assert grey.mean() - white.mean() >= 5  # grey/white differentiation, as on real CT
        assert _within(hu[np.isin(tissues, (CSF, VENTRICLE)) & normal], CSF_HU)
        scalp = hu[(tissues == SCALP) & normal]
        assert _within(scalp, (-120, 80)) and scalp.min() < -50  # skin and subcutaneous fat
        assert _within(hu[tissues == FAT], (-120, -50)) or not (tissues == FAT).any()
        assert _within(hu[tissues == EYE], (0, 20)) or not (tissues == EYE).any()
        # What fools a model: muscle and unenhanced vessels near blood, the dural sinuses a
        # little denser than brain, a scalp haematoma in the blood band; bone of the spine.
        assert _within(hu[tissues == MUSCLE], (40, 60))
        assert _within(hu[tissues == VESSEL], (35, 55)) or not (tissues == VESSEL).any()
        sinus = hu[(tissues == SINUS) & normal]
        assert _within(sinus, (50, 65)) and sinus.mean() > grey.mean() + 5
        assert _within(hu[tissues == HAEMATOMA], BLOOD_HU) or not (tissues == HAEMATOMA).any()
        assert _within(hu[tissues == BONE], (700, 1400)) or not (tissues == BONE).any()
        assert _within(hu[tissues == MARROW], (150, 450)) or not (tissues == MARROW).any()


def test_scanned_tissue_hu_keeps_its_mean_and_gains_a_few_hu_of_noise():
    for k in range(2):
        case = make_case(0, FINE_SHAPE, FINE_SPACING, index=k)
        white, grey, skull = _core_hu(case, WHITE), _core_hu(case, GREY), _core_hu(case, SKULL)
        csf = _core_hu(case, CSF, VENTRICLE)
        assert BRAIN_HU[0] <= white.mean() <= BRAIN_HU[1]
        assert BRAIN_HU[0] <= grey.mean() <= BRAIN_HU[1]
        assert grey.mean() > white.mean() + 4
        assert CSF_HU[0] <= csf.mean() <= CSF_HU[1]
        assert SKULL_HU[0] <= np.median(skull) <= SKULL_HU[1]
        assert 2.0 <= white.std() <= 8.0  # "scanner noise of a few HU"
        assert abs(np.median(case.hu[(case.tissues == AIR)]) + 1000) <= 2


def test_skull_is_a_shell_of_realistic_thickness():
    case = make_case(0, FINE_SHAPE, FINE_SPACING, index=0, clean=True)
    skull = case.tissues == SKULL
    z = int(np.argmax((case.tissues > SKULL).sum(axis=(0, 1))))  # the widest brain slice
    inside = ndimage.distance_transform_edt(skull[:, :, z], sampling=FINE_SPACING[:2])
    thickest = 2 * inside.max()
    assert 5.0 <= thickest <= 11.0
    # A closed shell: the intracranial space is not connected to the air outside in that slice.
    outside, _ = ndimage.label(~skull[:, :, z])
    assert outside[0, 0] != outside[FINE_SHAPE[0] // 2, FINE_SHAPE[1] // 2]


def test_blood_is_50_to_90_hu_at_the_core_of_every_lesion(cases, clean_cases):
    for clean in clean_cases:
        assert _within(clean.hu[clean.label > 0], BLOOD_HU) or not clean.label.any()
    cores = 0
    for scanned in cases:
        for subtype in SUBTYPES:
            for lesion in _lesions(scanned, subtype):
                core = ndimage.binary_erosion(lesion, np.ones((3, 3, 1), bool))
                if core.sum() >= 5:  # thin SAH tracks have little or no core at 2.4 mm
                    cores += 1
                    assert BLOOD_HU[0] <= np.median(scanned.hu[core]) <= BLOOD_HU[1], \
                        SUBTYPES[subtype]
    assert cores >= 10


def test_each_subtype_lies_in_its_place(cases):
    seen = set()
    for case in cases:
        skull = case.tissues == SKULL
        for subtype in SUBTYPES:
            mask = case.label == subtype
            if not mask.any():
                continue
            seen.add(subtype)
            under = case.tissues[mask]
            assert not np.isin(under, (AIR, SCALP, SKULL)).any()  # always intracranial
            if subtype in (EDH, SDH):
                for lesion in _lesions(case, subtype):
                    assert (ndimage.binary_dilation(lesion, NEIGHBOURS) & skull).any()
            elif subtype == IVH:
                assert np.all(under == VENTRICLE)
            elif subtype == SAH:
                assert np.all(under == CSF)  # sulci, fissures, the subarachnoid space
            else:
                assert np.isin(under, (GREY, WHITE, CSF)).all()
                assert np.isin(under, (GREY, WHITE)).mean() > 0.7  # in the parenchyma
                assert not (ndimage.binary_dilation(mask, NEIGHBOURS) & skull).any()
    assert seen == set(SUBTYPES)


def test_epidural_lenses_are_thicker_for_their_size_than_subdural_crescents(cases):
    def thickness_ratios(subtype):
        """Greatest depth from the skull over the cube root of the volume, per case."""
        ratios = []
        for case in cases:
            mask = case.label == subtype
            if mask.sum() < 20:  # a sliver at the edge of the scan tells nothing of the shape
                continue
            (box,) = ndimage.find_objects(mask.astype(np.uint8))
            box = tuple(slice(max(0, s.start - 4), s.stop + 4) for s in box)
            from_skull = ndimage.distance_transform_edt(case.tissues[box] != SKULL,
                                                        sampling=SPACING)
            volume = mask.sum() * np.prod(SPACING)
            ratios.append(from_skull[mask[box]].max() / volume ** (1 / 3))
        return ratios

    edh, sdh = thickness_ratios(EDH), thickness_ratios(SDH)
    assert len(edh) >= 2 and len(sdh) >= 2
    assert np.median(edh) > 1.3 * np.median(sdh)


def test_cases_vary_some_are_empty_and_labels_use_the_contract_codes():
    labels = [make_case(3, (64, 64, 24), (3.6, 3.6, 5.0), index=k).label for k in range(40)]
    assert all(set(np.unique(label)) <= {0, 1, 2, 3, 4, 5} for label in labels)
    assert all(label.dtype == np.uint8 for label in labels)
    empty = sum(not label.any() for label in labels)
    assert 3 <= empty <= 18  # about 25 % without hemorrhage, as real datasets have
    assert sum(len(np.unique(label)) >= 3 for label in labels) >= 5  # several subtypes at once
    volumes = [int((label > 0).sum()) for label in labels if label.any()]
    assert max(volumes) >= 10 * min(volumes)


def test_hemorrhage_is_not_separable_by_hu_alone(cases):
    """Partial volume of bone, the falx and calcifications put normal voxels in the blood band."""
    in_band = blood_in_band = 0
    for case in cases:
        band = (case.hu >= BLOOD_HU[0]) & (case.hu <= BLOOD_HU[1])
        in_band += band.sum()
        blood_in_band += (band & (case.label > 0)).sum()
    assert blood_in_band / in_band < 0.7


def test_same_seed_gives_identical_arrays_and_cases_differ():
    a, b = (make_case(7, (64, 64, 24), (3.6, 3.6, 5.0), index=2) for _ in range(2))
    for name in ("hu", "label", "tissues", "affine"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    other = make_case(7, (64, 64, 24), (3.6, 3.6, 5.0), index=3)
    assert not np.array_equal(a.hu, other.hu)
    assert not np.array_equal(a.hu, make_case(8, (64, 64, 24), (3.6, 3.6, 5.0), index=2).hu)


def test_affine_is_a_scanner_like_ras_affine():
    for k in range(4):
        case = make_case(0, (64, 64, 24), (3.6, 3.6, 5.0), index=k)
        assert case.hu.dtype == np.int16 and case.hu.shape == (64, 64, 24)
        assert np.isclose(np.linalg.det(case.affine[:3, :3]), 3.6 * 3.6 * 5.0)
        assert np.allclose(case.spacing, (3.6, 3.6, 5.0))
        assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
        assert np.allclose(case.affine[3], (0, 0, 0, 1))


def test_geometry_defaults_keep_a_head_sized_field_of_view():
    assert resolve_geometry(None, None) == ((512, 512, 32), (0.45, 0.45, 5.0))
    shape, spacing = resolve_geometry((128, 100, 20), None)
    assert shape == (128, 100, 20)
    assert spacing == pytest.approx((230 / 128, 230 / 100, 5.0))
    shape, spacing = resolve_geometry(None, (0.9, 0.9, 2.5))
    assert 225 <= shape[0] * 0.9 <= 232 and shape[2] * 2.5 >= 150
    for bad_shape, bad_spacing, key in (((10, 10, 4), None, "--shape"),
                                        ((64, 64, 24), (0.45, 0.45, 5.0), "--shape"),
                                        (None, (1.0, 1.0, 0.0), "--spacing"),
                                        (None, (1.0, float("nan"), 5.0), "--spacing"),
                                        ((64, 64), None, "--shape")):
        with pytest.raises(UsageError, match=key):
            resolve_geometry(bad_shape, bad_spacing)


def test_write_dataset_files_and_dataset_json(tiny_dataset):
    ids = [f"synth_{k:03d}" for k in range(6)]
    info = json.loads((tiny_dataset / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "EDH": 1, "IPH": 2, "IVH": 3, "SAH": 4, "SDH": 5}
    assert info["numTraining"] == 6
    assert (info["seed"], info["shape"], info["spacing"]) == (0, [64, 64, 24], [3.6, 3.6, 5.0])
    assert [entry["image"] for entry in info["training"]] == [f"./images/{c}.nii.gz" for c in ids]
    for case_id in ids:
        image = nib.load(tiny_dataset / "images" / f"{case_id}.nii.gz")
        label = nib.load(tiny_dataset / "labels" / f"{case_id}.nii.gz")
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape == (64, 64, 24)
        assert np.allclose(image.affine, label.affine)
        assert np.allclose(image.header.get_zooms(), (3.6, 3.6, 5.0))
    # Case k depends only on (seed, k): the file holds exactly what make_case draws.
    case = make_case(0, (64, 64, 24), (3.6, 3.6, 5.0), index=4)
    assert np.array_equal(np.asanyarray(nib.load(tiny_dataset / "images" / "synth_004.nii.gz")
                                        .dataobj), case.hu)


def test_fewer_cases_are_a_prefix_of_more(tmp_path):
    write_dataset(tmp_path / "two", 2, seed=5, shape=(64, 64, 24), spacing=(3.6, 3.6, 5.0))
    write_dataset(tmp_path / "three", 3, seed=5, shape=(64, 64, 24), spacing=(3.6, 3.6, 5.0))
    for case_id in ("synth_000", "synth_001"):
        for kind in ("images", "labels"):
            two, three = (np.asanyarray(nib.load(tmp_path / d / kind / f"{case_id}.nii.gz").dataobj)
                          for d in ("two", "three"))
            assert np.array_equal(two, three)


def test_cases_drawn_in_several_processes_are_those_drawn_in_one(tmp_path, monkeypatch):
    import ichseg.data.synth.dataset as dataset

    monkeypatch.setattr(dataset, "usable_cpus", lambda: 3)
    write_dataset(tmp_path / "three", 3, seed=5, shape=(64, 64, 24), spacing=(3.6, 3.6, 5.0))
    monkeypatch.setattr(dataset, "MAX_SYNTH_WORKERS", 1)
    write_dataset(tmp_path / "one", 3, seed=5, shape=(64, 64, 24), spacing=(3.6, 3.6, 5.0))
    for case_id in ("synth_000", "synth_001", "synth_002"):
        for kind in ("images", "labels"):
            one, three = (np.asanyarray(nib.load(tmp_path / d / kind / f"{case_id}.nii.gz").dataobj)
                          for d in ("one", "three"))
            assert np.array_equal(one, three)


def test_cli_synth_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    code = main(["synth", str(out), "--cases", "2", "--seed", "1", "--shape", "64", "64", "24",
                 "--spacing", "3.6", "3.6", "5"])
    assert code == 0
    assert "wrote 2 synthetic cases" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_000.nii.gz",
                                                                  "synth_001.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["seed"] == 1


@pytest.mark.parametrize("args, named", [
    (["--cases", "0"], "--cases"),
    (["--cases", "1", "--shape", "10", "10", "4"], "--shape"),
    (["--cases", "1", "--shape", "64", "64", "24", "--spacing", "0.45", "0.45", "5"], "--shape"),
    (["--cases", "1", "--spacing", "1", "1", "-5"], "--spacing"),
])
def test_cli_synth_refuses_bad_arguments_before_writing(tmp_path, capsys, args, named):
    out = tmp_path / "synth"
    assert main(["synth", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("inside", [False, True])
def test_cli_synth_refuses_an_out_that_is_or_lies_under_a_file(tmp_path, capsys, inside):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken / "synth" if inside else taken
    assert main(["synth", str(out), "--cases", "1", "--shape", "64", "64", "24"]) == 2
    assert f"{taken} is a file" in capsys.readouterr().err
    assert taken.read_text() == "not a folder"


def test_synth_refuses_a_folder_holding_other_scans_and_rewrites_its_own(tmp_path):
    geometry = {"shape": (64, 64, 24), "spacing": (3.6, 3.6, 5.0)}
    write_dataset(tmp_path, 3, **geometry)
    before = (tmp_path / "images" / "synth_002.nii.gz").read_bytes()
    # Two cases would leave synth_002 behind, to be read as part of a two-case dataset.
    with pytest.raises(UsageError, match="synth_002"):
        write_dataset(tmp_path, 2, **geometry)
    assert (tmp_path / "images" / "synth_002.nii.gz").read_bytes() == before
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 3
    assert write_dataset(tmp_path, 3, seed=1, **geometry) == ["synth_000", "synth_001", "synth_002"]
    assert json.loads((tmp_path / "dataset.json").read_text())["seed"] == 1


def test_labelled_blood_lies_in_the_cranial_cavity_and_scalp_blood_is_background(cases):
    haematomas = 0
    for case in cases:
        cavity = intracranial_mask(case.tissues)
        assert cavity[case.label > 0].all()
        outside = case.tissues == HAEMATOMA
        haematomas += outside.any()
        assert not case.label[outside].any()
        # Outside the skull: in its slice, never touching the cranial cavity.
        assert not (ndimage.binary_dilation(outside, np.ones((3, 3, 1), bool)) & cavity).any()
    assert 2 <= haematomas <= 12  # about 30 %


def test_scans_starting_in_the_neck_show_muscle_spine_airway_and_vessels_below_the_cavity():
    for k in range(3):
        case = make_case(2, (64, 64, 40), (3.6, 3.6, 5.0), index=k, neck_share=1.0)
        cavity = intracranial_mask(case.tissues)
        volume_ml = cavity.sum() * 3.6 * 3.6 * 5.0 / 1000
        assert 1000 <= volume_ml <= 1900  # an adult's cranial cavity, vertex to foramen magnum
        lowest = int(np.flatnonzero(cavity.any(axis=(0, 1))).min())
        assert lowest >= 3  # at least 15 mm of neck below the cavity
        neck = case.tissues[:, :, :lowest]
        for tissue in (MUSCLE, BONE, CANAL, VESSEL, AIR, FAT):
            assert (neck == tissue).any()
        assert (case.tissues == SINUS).any()
        muscle = _core_hu(case, MUSCLE)
        assert BLOOD_HU[0] - 15 <= muscle.mean() <= 60  # blood-like on a brain window


def test_thick_slices_are_the_slab_mean_of_thin_slices_of_the_same_head():
    """A 5 mm slice is the mean of the five 1 mm slices across it (clean: exactly, up to the
    rounding to whole HU; scanned: within the noise), and its label is theirs wherever most of
    them agree."""
    geometry = {"shape": (64, 64, 24), "spacing": (3.6, 3.6, 5.0)}
    thin_geometry = {"shape": (64, 64, 120), "spacing": (3.6, 3.6, 1.0)}
    for k in (0, 1, 3):
        thick = make_case(4, **geometry, index=k, clean=True)
        thin = make_case(4, **thin_geometry, index=k, clean=True)
        # 5 mm slice j spans the 1 mm slices 5j - 2 .. 5j + 2.
        slabs = thin.hu[:, :, 3:118].astype(float).reshape(64, 64, 23, 5)
        assert np.abs(thick.hu[:, :, 1:] - slabs.mean(axis=-1)).max() <= 1.0
        labels = thin.label[:, :, 3:118].reshape(64, 64, 23, 5)
        votes = (labels == labels[..., 2:3]).sum(axis=-1)
        majority = votes >= 3
        assert np.array_equal(thick.label[:, :, 1:][majority], labels[..., 2][majority])
        assert (thick.label > 0).any() == (thin.label > 0).any()
        # Scanned: the thick slice matches the thin slab's mean far better than its centre.
        thick = make_case(4, **geometry, index=k).hu[:, :, 1:].astype(float)
        thin = make_case(4, **thin_geometry, index=k).hu[:, :, 3:118].astype(float)
        thin = thin.reshape(64, 64, 23, 5)
        head = thick > -500
        slab_error = np.abs(thick - thin.mean(axis=-1))[head].mean()
        centre_error = np.abs(thick - thin[..., 2])[head].mean()
        assert slab_error < 8.0 and slab_error < 0.6 * centre_error


def test_a_share_of_cases_start_in_the_neck_and_none_with_neck_share_zero():
    geometry = {"shape": (64, 64, 32), "spacing": (3.6, 3.6, 5.0)}

    def starts_in_neck(case):
        """At least 15 mm of the scan below the cranial cavity."""
        return bool(np.flatnonzero(intracranial_mask(case.tissues).any(axis=(0, 1))).min() >= 3)

    shares = [starts_in_neck(make_case(5, **geometry, index=k, clean=True)) for k in range(12)]
    assert 2 <= sum(shares) <= 11
    assert not any(starts_in_neck(make_case(5, **geometry, index=k, clean=True, neck_share=0.0))
                   for k in range(4))


def test_scanned_cases_have_streaks_across_the_posterior_fossa_and_clean_ones_none():
    """Beam hardening between the petrous bones: deviations far beyond the noise just above the
    skull base, not higher up in the brain."""
    geometry = {"shape": (96, 96, 32), "spacing": (2.4, 2.4, 5.0), "neck_share": 0.0}
    for k in range(2):
        clean = make_case(0, **geometry, index=k, clean=True)
        scanned = make_case(0, **geometry, index=k)
        cavity = ndimage.binary_erosion(intracranial_mask(clean.tissues), NEIGHBOURS)
        deviation = np.abs(scanned.hu.astype(float) - clean.hu)
        lowest = int(np.flatnonzero(cavity.any(axis=(0, 1))).min())
        fossa = deviation[:, :, lowest:lowest + 3][cavity[:, :, lowest:lowest + 3]]
        above = deviation[:, :, lowest + 8:][cavity[:, :, lowest + 8:]]
        assert np.percentile(fossa, 99) > 1.3 * np.percentile(above, 99)
