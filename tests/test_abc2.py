"""ABC/2 on shapes of known volume, on the native grid of their affine."""

import math

import numpy as np
import pytest

from ichseg.evaluation.abc2 import IPH, abc2, slice_axis


def _grid(shape, spacing):
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def test_cuboid_abc2_is_its_volume():
    # A rectangle's longest axis is its diagonal and its width across the diagonal 2ab/diagonal,
    # so A x B = 2ab and ABC/2 of a box is exactly its volume.
    labels = np.zeros((40, 40, 12), np.uint8)
    labels[5:25, 8:18, 2:8] = 1
    affine = np.diag([0.5, 0.8, 5.0, 1.0])
    result = abc2(labels, affine, subtypes=False)
    assert result.a_mm == pytest.approx(math.hypot(20 * 0.5, 10 * 0.8))
    assert result.c_mm == pytest.approx(30.0)
    assert result.abc2_ml == pytest.approx(10 * 8 * 30 / 1000)
    assert result.lesion_ml == pytest.approx(result.abc2_ml)


@pytest.mark.parametrize("weighted", [False, True])
def test_ellipsoid_abc2_is_close_to_its_volume(weighted):
    spacing = (0.45, 0.45, 2.0)
    x, y, z = _grid((200, 200, 40), spacing)
    a, b, c = 25.0, 15.0, 30.0  # semi-axes in mm
    ellipsoid = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1
    labels = np.where(ellipsoid, IPH, 0).astype(np.uint8)
    labels[:5, :5, :5] = 4  # a small SAH elsewhere is not the intraparenchymal lesion
    result = abc2(labels, np.diag([*spacing, 1.0]), subtypes=True, weighted=weighted)
    true_ml = 4 / 3 * math.pi * a * b * c / 1000
    assert result.a_mm == pytest.approx(2 * a, abs=1.0)
    assert result.b_mm == pytest.approx(2 * b, abs=1.0)
    assert result.lesion_ml == pytest.approx(true_ml, rel=0.02)
    if weighted:  # Kothari's partial slices: C = 1.37 c instead of 2 c
        assert result.abc2_ml == pytest.approx(0.65 * true_ml, rel=0.06)
    else:  # 6 / pi of 4/3 pi abc: ABC/2 is 95 % of an ellipsoid's volume
        assert result.abc2_ml == pytest.approx(6 / math.pi / 2 * true_ml, rel=0.05)
        assert result.abc2_ml == pytest.approx(true_ml, rel=0.08)


def test_largest_lesion_only_and_rotated_in_plane():
    # Two lesions: the smaller one is ignored. A bar at 45 degrees: A is along it, B across it.
    labels = np.zeros((60, 60, 6), np.uint8)
    for i in range(40):
        labels[10 + i, 10 + i: 14 + i, 1:5] = 1
    labels[50:53, 2:5, 1:2] = 1
    result = abc2(labels, np.eye(4), subtypes=False)
    assert result.a_mm > 40 * math.sqrt(2) - 1
    assert 3.5 < result.b_mm < 6  # a 4-pixel-wide staircase, 2.8 mm across its axis
    assert result.c_mm == 4.0
    assert result.lesion_ml == pytest.approx(40 * 4 * 4 / 1000)


def test_slice_axis_follows_the_head_foot_direction_and_empty_is_none():
    sagittal = np.array([[0, 0, 2.0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 1.0]])
    assert slice_axis(sagittal) == 1
    assert slice_axis(np.diag([0.5, 0.5, 5.0, 1.0])) == 2
    assert abc2(np.zeros((4, 4, 4), np.uint8), np.eye(4), subtypes=False) is None
    assert abc2(np.full((4, 4, 4), 1, np.uint8), np.eye(4), subtypes=True) is None
