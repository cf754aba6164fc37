"""Prediction end to end with tiny models built here (no training): native grids in any
orientation, DICOM series, volumes, empty cases, test-time augmentation and bad inputs."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numba
import numpy as np
import pytest
import torch
from dicom_series import MR_IMAGE, SECONDARY_CAPTURE, stack, tilted, write_series

from ichseg.cli import main
from ichseg.config import preset_config
from ichseg.data.io import write_nifti
from ichseg.errors import UsageError
from ichseg.inference.predict import (
    Predictor,
    class_probabilities,
    list_inputs,
    predict_cases,
)
from ichseg.models import build_model

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
pytestmark = pytest.mark.filterwarnings("ignore:.*Hounsfield:UserWarning")  # MRI, HU ramps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny networks' tensors are too small to gain from threads, and on a busy 2-core
    machine competing threads make them many times slower."""
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


def _checkpoint(path: Path, background: float, hemorrhage: float) -> Path:
    """A tiny nnMamba whose output is fixed by its last layer: every voxel of the network's
    grid gets these two logits (so the prediction is the cropped head box, or nothing)."""
    cfg = preset_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.logits.weight.zero_()
        model.head.logits.bias.copy_(torch.tensor([background, hemorrhage]))
    torch.save({"model_state": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def everywhere(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "everywhere.pt", -5.0, 5.0)


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "nowhere.pt", 5.0, -5.0)


def _phantom_ras() -> tuple[np.ndarray, np.ndarray]:
    """A small head CT in RAS order, off-centre in a wide field of view, and its affine."""
    shape, spacing = (40, 36, 10), np.array([4.0, 4.0, 5.0])
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    mm = ijk * spacing
    radius = np.linalg.norm((mm - [60.0, 70.0, 25.0]) / [45.0, 55.0, 30.0], axis=-1)
    hu = np.where(radius < 1.0, 30.0, -1000.0).astype(np.int16)
    hu[(radius > 0.9) & (radius < 1.0)] = 1000
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-80.0, -70.0, -20.0]
    return hu, affine


def _reoriented(hu: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same scan stored in the voxel order `codes` (e.g. "SLA")."""
    target = nib.orientations.axcodes2ornt(codes)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
    array = nib.orientations.apply_orientation(hu, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, hu.shape)
    return np.ascontiguousarray(array), new_affine


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_outputs_keep_the_input_grid_in_any_orientation(tmp_path, everywhere):
    hu, affine = _phantom_ras()
    inputs = tmp_path / "in"
    for codes in ("RAS", "LPI", "SLA"):
        array, new_affine = _reoriented(hu, affine, codes)
        assert nib.aff2axcodes(new_affine) == tuple(codes)
        write_nifti(inputs / f"head_{codes}.nii.gz", array, new_affine)
    out = tmp_path / "out"
    results = predict_cases(everywhere, [inputs], out, quiet=True)
    assert [r["case"] for r in results] == ["head_LPI", "head_RAS", "head_SLA"]

    canonical = {}
    for codes in ("RAS", "LPI", "SLA"):
        source = nib.load(inputs / f"head_{codes}.nii.gz")
        predicted = nib.load(out / f"head_{codes}.nii.gz")
        assert predicted.shape == source.shape
        assert np.array_equal(predicted.affine, source.affine)
        assert predicted.get_data_dtype() == np.uint8
        canonical[codes] = np.asarray(nib.as_closest_canonical(predicted).dataobj)
        assert (out / "overlays" / f"head_{codes}.png").stat().st_size > 5_000
    # One scan, three voxel orders: the same voxels predicted, covering what its skull
    # encloses (the cranial cavity: the rest is dropped) and not the far corner of the field
    # of view.
    assert np.array_equal(canonical["RAS"], canonical["LPI"])
    assert np.array_equal(canonical["RAS"], canonical["SLA"])
    assert canonical["RAS"][(hu > -500) & (hu < 300)].all()
    assert not canonical["RAS"][hu < -500].any()
    assert not canonical["RAS"][-5:, :5].any()


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])
def test_nibabel_test_images_round_trip(tmp_path, everywhere, name):
    source = nib.load(NIBABEL_DATA / name)
    assert nib.aff2axcodes(source.affine) != ("R", "A", "S")
    path = NIBABEL_DATA / name
    if len(source.shape) == 4:  # one volume of the 4D series
        path = tmp_path / "volume0.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[..., 0], source.affine,
                                 source.header), path)
    out = tmp_path / "out"
    (result,) = predict_cases(everywhere, [path], out, quiet=True)
    predicted = nib.load(result["output"])
    assert predicted.shape == source.shape[:3]
    assert np.allclose(predicted.affine, source.affine, atol=1e-6)


def test_dicom_study_predicts_each_axial_ct_series_and_notes_the_rest(tmp_path, everywhere,
                                                                     capsys):
    study = tmp_path / "study"
    write_series(study / "thick", stack([0, 5, 10, 15, 20, 25]), number=2)
    # 4 mm then 7 mm, tilted: predicted on the regular grid covering it.
    write_series(study / "tilted", stack([0, 4, 8, 12, 19, 26], tilted(-15)), number=5,
                 orientation=tilted(-15), tilt=-15)
    write_series(study / "scout", [(-30.0, 0.0, 40.0)], number=1, description="SCOUT",
                 orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(study / "dose", [(0.0, 0.0, 0.0)], number=999, description="DOSE INFO",
                 sop_class=SECONDARY_CAPTURE, modality="OT")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="gantry tilt of 15.0 degrees and uneven slice gaps"):
        code = main(["predict", "--checkpoint", str(everywhere), str(study), "--out", str(out)])
    assert code == 0
    said = capsys.readouterr().out
    assert "skipped series 1 'SCOUT'" in said and "skipped series 999" in said
    rows = _read_csv(out / "volumes.csv")
    assert [row["case"] for row in rows] == ["study_s2", "study_s5"]
    assert "series 5 'HEAD STD'" in rows[1]["input"]
    for row, slices in zip(rows, (6, 8), strict=True):
        predicted = nib.load(out / f"{row['case']}.nii.gz")
        assert predicted.shape[2] == slices  # 26 mm tilted by 15 degrees, 4 mm apart at most
        header = predicted.header
        np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-4)
        labels = np.asarray(predicted.dataobj)
        voxel_mm3 = abs(np.linalg.det(predicted.affine[:3, :3]))
        assert labels.sum() > 0
        assert float(row["hemorrhage_ml"]) == pytest.approx(labels.sum() * voxel_mm3 / 1000,
                                                            rel=1e-5)
    assert float(rows[0]["voxel_volume_mm3"]) == pytest.approx(2.0 * 2.0 * 5.0, rel=1e-5)


def test_list_inputs_names_cases_by_file_and_folder(tmp_path):
    hu, affine = _phantom_ras()
    scans = tmp_path / "scans"
    write_nifti(scans / "b_0000.nii.gz", hu, affine)
    write_nifti(scans / "a.nii", hu, affine)
    (scans / "notes.txt").write_text("ignored")
    single = write_nifti(tmp_path / "c.nii.gz", hu, affine)
    write_series(tmp_path / "dicom_patient" / "CT", stack([0, 5, 10]))
    found, notes = list_inputs([scans, single, tmp_path / "dicom_patient"])
    assert [(case, str(path)) for case, path in found[:3]] == [
        ("a", str(scans / "a.nii")), ("b", str(scans / "b_0000.nii.gz")), ("c", str(single))]
    assert found[3][0] == "dicom_patient" and "series 2" in str(found[3][1]) and notes == []


def test_list_inputs_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for bad in ("notes.txt", "empty", "missing.nii.gz"):
        with pytest.raises(UsageError, match=f"input {tmp_path / bad} "):
            list_inputs([tmp_path / bad])
    hu, affine = _phantom_ras()
    write_nifti(tmp_path / "a.nii.gz", hu, affine)
    write_nifti(tmp_path / "a_0000.nii.gz", hu, affine)
    with pytest.raises(UsageError, match="both be written as case 'a'"):
        list_inputs([tmp_path / "a.nii.gz", tmp_path / "a_0000.nii.gz"])


def test_empty_prediction_is_said(tmp_path, nowhere, caplog):
    hu, affine = _phantom_ras()
    write_nifti(tmp_path / "head.nii.gz", hu, affine)
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        (result,) = predict_cases(nowhere, [tmp_path / "head.nii.gz"], tmp_path / "out",
                                  quiet=True, save_probabilities=True)
    assert result["empty"] and result["hemorrhage_ml"] == 0.0
    assert "head: no hemorrhage predicted" in caplog.text
    assert _read_csv(tmp_path / "out" / "volumes.csv")[0]["empty"] == "yes"
    probability = nib.load(tmp_path / "out" / "probabilities" / "head.nii.gz")
    assert probability.shape == hu.shape
    assert float(np.asarray(probability.dataobj).max()) < 0.5


def test_mirror_tta_undoes_each_flip():
    # A voxel-wise network commutes with mirroring: averaged over flipped copies it must give
    # exactly the unflipped answer, which fails if any copy is not flipped back.
    cfg = preset_config("tiny")
    torch.manual_seed(1)
    model = torch.nn.Conv3d(cfg.in_channels, cfg.num_classes, 1).eval()
    predictor = Predictor(model, cfg, torch.device("cpu"), Path("voxelwise"))
    channels = np.random.default_rng(0).random((cfg.in_channels, 40, 28, 20), dtype=np.float32)
    plain = class_probabilities(predictor, channels, tta=False)
    mirrored = class_probabilities(predictor, channels, tta=True)
    assert plain.shape == (2, 40, 28, 20)
    assert np.allclose(plain.sum(axis=0), 1.0, atol=1e-5)
    assert np.allclose(mirrored, plain, atol=1e-5)


def test_bad_input_exits_2_naming_it_and_keeps_earlier_cases(tmp_path, everywhere, capsys):
    hu, affine = _phantom_ras()
    good = write_nifti(tmp_path / "a_good.nii.gz", hu, affine)
    broken = tmp_path / "b_broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:200])
    later = write_nifti(tmp_path / "c_later.nii.gz", hu, affine)
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(everywhere), str(good), str(broken), str(later),
                 "--out", str(out)])
    assert code == 2
    assert str(broken) in capsys.readouterr().err
    assert (out / "a_good.nii.gz").is_file() and (out / "overlays" / "a_good.png").is_file()
    assert [r["case"] for r in _read_csv(out / "volumes.csv")] == ["a_good"]
    assert not (out / "c_later.nii.gz").exists()

    flat = write_nifti(tmp_path / "flat.nii.gz", hu[:, :, :1], affine)
    assert main(["predict", "--checkpoint", str(everywhere), str(flat), "--out",
                 str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "flat.nii.gz" in err and "2D" in err


def test_scans_are_refused_above_the_models_own_voxel_limit(tmp_path, everywhere, capsys):
    """predict holds scans to the `data.max_voxels` the model was trained with, not the
    default: a run that lowered it (or raised it, for larger scans) predicts by its own."""
    hu, affine = _phantom_ras()  # 40 x 36 x 10 = 14,400 voxels
    scan = write_nifti(tmp_path / "head.nii.gz", hu, affine)
    state = torch.load(everywhere, weights_only=True)
    state["config"]["data"]["max_voxels"] = 10_000
    strict = tmp_path / "strict.pt"
    torch.save(state, strict)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(strict), str(scan), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "head.nii.gz" in err and "data.max_voxels (10000)" in err
    assert not (out / "head.nii.gz").exists()
    state["config"]["data"]["max_voxels"] = 14_400
    torch.save(state, strict)
    assert main(["predict", "--checkpoint", str(strict), str(scan), "--out", str(out)]) == 0
    assert (out / "head.nii.gz").is_file()


def test_an_mr_series_in_a_study_exits_2_naming_it(tmp_path, everywhere, capsys):
    write_series(tmp_path / "study" / "ct", stack([0, 5, 10]), number=2)
    write_series(tmp_path / "study" / "mr", stack([0, 5, 10]), number=3, modality="MR",
                 sop_class=MR_IMAGE)
    code = main(["predict", "--checkpoint", str(everywhere), str(tmp_path / "study"), "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "series 3 'HEAD STD' in " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_folder_uses_its_best_checkpoint(tmp_path, everywhere, nowhere):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(everywhere, run / "checkpoints" / "best.pt")
    shutil.copy(nowhere, run / "checkpoints" / "ckpt-000002.pt")
    hu, affine = _phantom_ras()
    scan = write_nifti(tmp_path / "head.nii.gz", hu, affine)
    (best,) = predict_cases(run, [scan], tmp_path / "best", quiet=True)
    assert not best["empty"]
    (last,) = predict_cases(run, [scan], tmp_path / "last", checkpoint="last", quiet=True)
    assert last["empty"]


def test_the_runs_inference_settings_choose_the_model_and_tta(tmp_path, everywhere, nowhere,
                                                              monkeypatch):
    from ichseg.inference import predict

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(everywhere, run / "checkpoints" / "best.pt")
    last = torch.load(nowhere, weights_only=True)
    last["config"]["inference"]["tta"] = True  # trained (or continued) with --set inference.tta
    torch.save(last, run / "checkpoints" / "ckpt-000002.pt")
    cfg = preset_config("tiny")
    cfg.inference.checkpoint = "last"
    cfg.save(run / "config.yaml")
    seen = []
    real = predict.class_probabilities
    monkeypatch.setattr(predict, "class_probabilities",
                        lambda p, c, tta=False, overlap=None, on_pass=None:
                        seen.append(tta) or real(p, c, False, overlap, on_pass))
    hu, affine = _phantom_ras()
    scan = write_nifti(tmp_path / "head.nii.gz", hu, affine)
    (last,) = predict_cases(run, [scan], tmp_path / "out", quiet=True)
    assert last["empty"] and seen == [True]  # the `last` model, with test-time augmentation
    (best,) = predict_cases(run, [scan], tmp_path / "best", checkpoint="best", quiet=True)
    assert not best["empty"] and seen == [True, False]  # best.pt's config: no tta
