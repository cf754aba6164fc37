"""Metric values worked out by hand, the empty-mask conventions, and agreement with DeepMind's
surface-distance (the INSTANCE 2022 evaluation's definitions) and MONAI on anisotropic masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import surface_distance
import torch
from monai.metrics import compute_surface_dice

from ichseg.data.masks import label_volumes_ml
from ichseg.evaluation.metrics import (
    case_metrics,
    dice,
    image_diagonal_mm,
    lesion_f1,
    surface_metrics,
)

# DeepMind's library still calls scipy.ndimage's deprecated `filters`/`morphology` namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")


def _mask(shape=(10, 10, 10), *points):
    m = np.zeros(shape, dtype=bool)
    for p in points:
        m[p] = True
    return m


def test_single_voxels_three_slices_apart_at_5mm_are_15mm_apart():
    pred = _mask((10, 10, 10), (5, 5, 2))
    gt = _mask((10, 10, 10), (5, 5, 5))
    result = case_metrics(pred, gt, spacing=(0.5, 0.5, 5.0), voxel_volume_mm3=1.25)
    assert result["hd95"] == pytest.approx(15.0)
    assert result["hd_max"] == pytest.approx(15.0)
    assert result["dice"] == 0.0
    assert result["nsd"] == 0.0


def test_distance_uses_each_axis_spacing():
    # 3 voxels along x at 0.5 mm and 1 voxel along z at 5 mm: sqrt(1.5² + 5²) mm.
    pred = _mask((10, 10, 10), (2, 5, 5))
    gt = _mask((10, 10, 10), (5, 5, 6))
    result = surface_metrics(pred, gt, spacing=(0.5, 0.7, 5.0))
    assert result["hd_max"] == pytest.approx(math.hypot(1.5, 5.0), rel=1e-6)


def _blobs(seed: int, shape, spacing):
    """Two overlapping ellipsoid-like blobs with scattered specks, on an anisotropic grid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1) * spacing
    gt = np.linalg.norm(grid - np.array([9.0, 10.0, 30.0]), axis=-1) < 7.0
    pred = np.linalg.norm(grid - np.array([10.0, 10.5, 28.0]), axis=-1) < 6.5
    pred ^= rng.random(shape) < 0.01  # scattered specks make the tails differ
    return pred, gt


@pytest.mark.parametrize("spacing", [(0.45, 0.6, 5.0), (0.2, 0.45, 4.3)])
def test_surface_metrics_match_deepmind_surface_distance_on_anisotropic_masks(spacing):
    # The reference is DeepMind's own library (`surface-distance` on PyPI), the code INSTANCE
    # 2022's evaluation copies: surface elements on the voxel-corner grid weighted by area.
    pred, gt = _blobs(3, (40, 36, 12), spacing)
    ours = surface_metrics(pred, gt, spacing, tolerances=(0.42, 1.0, 2.0))
    reference = surface_distance.compute_surface_distances(gt, pred, spacing)
    for tolerance in (0.42, 1.0, 2.0):
        expected = surface_distance.compute_surface_dice_at_tolerance(reference, tolerance)
        assert ours[f"nsd_{tolerance:g}"] == pytest.approx(expected, rel=1e-5)
    assert ours["hd95"] == pytest.approx(surface_distance.compute_robust_hausdorff(reference, 95),
                                         rel=1e-5)
    assert ours["hd_max"] == pytest.approx(
        surface_distance.compute_robust_hausdorff(reference, 100), rel=1e-5)
    assert 0.0 < ours["nsd_0.42"] < ours["nsd_1"] < ours["nsd_2"] < 1.0


def test_case_metrics_nsd_tolerance_defaults_to_instance_and_can_be_chosen():
    pred, gt = _blobs(4, (40, 36, 12), (0.45, 0.45, 5.0))
    default = case_metrics(pred, gt, (0.45, 0.45, 5.0), 1.0)
    chosen = case_metrics(pred, gt, (0.45, 0.45, 5.0), 1.0, nsd_tolerance_mm=2.0)
    reference = surface_distance.compute_surface_distances(gt, pred, (0.45, 0.45, 5.0))
    assert default["nsd"] == pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(reference, 0.42), rel=1e-5)
    assert chosen["nsd"] == pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(reference, 2.0), rel=1e-5)
    assert default["nsd_1"] == chosen["nsd_1"]
    assert default["abs_rvd"] == pytest.approx(abs(default["rvd"])) and default["rvd"] < 0


def test_dice_and_volumes_by_hand():
    gt = np.zeros((4, 4, 4), dtype=bool)
    gt[0:2, 0:2, 0:2] = True  # 8 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 0:2, 0:2] = True  # 8 voxels, 4 shared
    assert dice(pred, gt) == pytest.approx(2 * 4 / 16)
    result = case_metrics(pred, gt, spacing=(1.0, 2.0, 3.0), voxel_volume_mm3=6.0)
    assert result["gt_ml"] == pytest.approx(8 * 6.0 / 1000)
    assert result["pred_ml"] == pytest.approx(8 * 6.0 / 1000)
    assert result["rvd"] == 0.0
    assert result["volume_error_ml"] == 0.0


def test_both_empty_is_perfect():
    empty = np.zeros((5, 6, 7), dtype=bool)
    result = case_metrics(empty, empty, spacing=(1.0, 1.0, 5.0), voxel_volume_mm3=5.0)
    assert result["dice"] == 1.0
    assert result["hd95"] == 0.0 and result["hd_max"] == 0.0
    assert result["nsd"] == 1.0 and result["nsd_1"] == 1.0
    assert result["lesion_f1"] == 1.0
    assert result["rvd"] == 0.0


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_reports_the_image_diagonal(empty_side):
    shape, spacing = (20, 30, 8), (0.5, 0.5, 5.0)
    full = _mask(shape, (10, 10, 4))
    empty = np.zeros(shape, dtype=bool)
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    result = case_metrics(pred, gt, spacing=spacing, voxel_volume_mm3=1.25)
    diagonal = math.sqrt(10.0**2 + 15.0**2 + 40.0**2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diagonal)
    assert result["hd95"] == pytest.approx(diagonal)
    assert result["hd_max"] == pytest.approx(diagonal)
    assert result["dice"] == 0.0 and result["nsd"] == 0.0 and result["lesion_f1"] == 0.0
    if empty_side == "gt":
        assert math.isnan(result["rvd"])
    else:
        assert result["rvd"] == -1.0


def test_lesion_f1_counts_26_connected_components():
    gt = np.zeros((12, 12, 12), dtype=bool)
    gt[1, 1, 1] = gt[2, 2, 2] = True  # touching only at a corner: one lesion
    gt[8, 8, 8] = True  # a second lesion, missed
    pred = np.zeros_like(gt)
    pred[2, 2, 2] = True  # hits the first lesion
    pred[5, 10, 1] = True  # a false positive
    # recall 1/2, precision 1/2 -> F1 1/2
    assert lesion_f1(pred, gt) == pytest.approx(0.5)
    pred[8, 8, 8] = True  # now both lesions found, one false positive of three predicted
    assert lesion_f1(pred, gt) == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated argument
def test_nsd_agrees_with_monai_subvoxel_surface_dice():
    spacing = (0.45, 0.6, 5.0)
    pred, gt = _blobs(5, (40, 36, 12), spacing)
    ours = surface_metrics(pred, gt, spacing, tolerances=(2.0,))
    as_batch = lambda m: torch.from_numpy(m)[None, None]  # noqa: E731
    nsd = compute_surface_dice(as_batch(pred), as_batch(gt), [2.0], include_background=True,
                               spacing=spacing, use_subvoxels=True)
    assert ours["nsd_2"] == pytest.approx(float(nsd), rel=1e-5)


def test_label_volumes_per_class():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0, 0, :3] = 2
    labels[5, 5, :4] = 5
    volumes = label_volumes_ml(labels, 2.5, {1: "EDH", 2: "IPH", 5: "SDH"})
    assert volumes == pytest.approx({"total": 7 * 2.5 / 1000, "EDH": 0.0,
                                     "IPH": 3 * 2.5 / 1000, "SDH": 4 * 2.5 / 1000})
