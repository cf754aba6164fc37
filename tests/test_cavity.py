"""The cranial cavity (data/cavity.py) on phantoms, whose cavity is known by construction, and
its place in the preprocessed-case cache."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichseg.config import DataConfig
from ichseg.data.cache import PreprocessedCache
from ichseg.data.cavity import Cavity, find_cavity
from ichseg.data.layouts import Case
from ichseg.data.synth.case import make_case
from ichseg.data.synth.tissues import (
    CALCIFICATION,
    CSF,
    EDEMA,
    FALX,
    GREY,
    VENTRICLE,
    WHITE,
)

INTRACRANIAL = (GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION)


def constructed_cavity(tissues: np.ndarray) -> np.ndarray:
    """The phantom's intracranial space: the largest connected part of the tissues drawn
    inside the inner table (small pockets the skull base's bone walls in are left out)."""
    parts, _ = ndimage.label(np.isin(tissues, INTRACRANIAL))
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return parts == sizes.argmax()


# (seed, shape, spacing): thick slices with fine pixels, thin slices, each with its own tilt.
PHANTOMS = [
    (3, (512, 512, 32), (0.45, 0.45, 5.0)),
    (4, (192, 192, 150), (1.0, 1.0, 1.0)),
]


@pytest.mark.parametrize("seed, shape, spacing", PHANTOMS)
def test_phantom_cavity_is_the_constructed_one_and_holds_every_bleed(seed, shape, spacing):
    case = make_case(seed, shape, spacing)
    cavity = find_cavity(case.hu, case.affine)
    assert cavity.reason is None and cavity.mask.shape == case.hu.shape
    truth = constructed_cavity(case.tissues)
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    truth_ml = truth.sum() * voxel_ml
    # Inside the inner table, up to its partial-volume rim.
    assert (truth & ~cavity.mask).sum() <= 0.005 * truth.sum()
    assert abs(cavity.volume_ml(case.affine) - truth_ml) < 0.06 * truth_ml
    bleeds = (case.label > 0) & truth
    assert not (bleeds & ~cavity.mask).any()
    # Nothing of the scalp's outer layers nor the air around the head.
    skin = (case.tissues == 1) & ~ndimage.binary_dilation(truth, iterations=3)
    assert not (cavity.mask & (case.hu < -900)).sum() > 0.001 * cavity.mask.sum()
    assert (cavity.mask & skin).sum() < 0.01 * cavity.mask.sum()


def test_no_skull_gives_none_with_a_reason():
    case = make_case(5, (128, 128, 24), (1.6, 1.6, 5.0))
    soft = np.where(case.hu > 200, 40, case.hu).astype(np.int16)  # the bone made soft tissue
    found = find_cavity(soft, case.affine)
    assert found.mask is None and "300 HU" in found.reason
    assert found.volume_ml(case.affine) == 0.0
    # Bone that encloses nothing: a slab, as a table or a body CT's spine might show.
    slab = np.full((96, 96, 20), -1000, np.int16)
    slab[20:70, 40:50, :] = 800
    found = find_cavity(slab, np.diag([2.0, 2.0, 5.0, 1.0]))
    assert found == Cavity(None, found.reason) and "encloses" in found.reason


def test_cache_stores_the_cavity_on_the_prepared_grid(tmp_path):
    from ichseg.data.io import write_nifti

    case = make_case(6, (160, 160, 28), (1.3, 1.3, 5.0))
    image, label = tmp_path / "c_0000.nii.gz", tmp_path / "c.nii.gz"
    write_nifti(image, case.hu, case.affine)
    write_nifti(label, case.label, case.affine)
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"), spacing=[1.3, 1.3, 5.0])
    prepared = PreprocessedCache(cfg).load_case(Case("c", image, label))
    assert prepared.cavity is not None and prepared.cavity.dtype == bool
    assert prepared.cavity.shape == prepared.hu.shape
    voxel_ml = float(np.prod(cfg.spacing)) / 1000.0
    native = find_cavity(case.hu, case.affine).volume_ml(case.affine)
    assert abs(prepared.cavity.sum() * voxel_ml - native) < 0.03 * native
    assert not (prepared.label.astype(bool) & ~prepared.cavity).any()
    assert (prepared.hu[prepared.cavity] > 300).mean() < 0.05  # the inner table's rim
