"""ABC/2: the bedside estimate of a hemorrhage's volume, beside the voxel count it approximates.

Clinicians estimate an intraparenchymal bleed's volume from three calliper lengths (Kothari et al.,
Stroke 1996), and trial criteria are often stated in it, so predictions report it next to the
voxel volume. Measured here on the prediction's own (native) voxel grid, in mm:

- the lesion: the largest 26-connected component of intraparenchymal hemorrhage (code 2), or, for
  a binary model, the largest component of any hemorrhage;
- the slices are the planes across the array axis closest to the patient's head-foot axis (the
  affine's superior direction), the axial slices of an ordinary scan;
- A: the longest distance across the lesion on the slice where its area is largest, measured edge
  to edge (between the outer corners of its pixels, so a 10-pixel row is 10 pixels long);
- B: the lesion's width on that slice perpendicular to A (the extent of its pixels' corners
  projected on the in-plane direction at right angles to A);
- C: the number of slices showing the lesion times the slice spacing. Kothari's weighting of
  partial slices (a slice with 25-75 % of the largest area counts a half, below 25 % none) is
  off by default: it underestimates regular shapes (an ellipsoid's ABC/2 falls to 65 % of its
  volume with it, 95 % without) and centres apply it differently; `weighted=True` applies it;
- ABC/2 = A x B x C / 2, in mL (1 mL = 1000 mm^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichseg.data.masks import bounding_box, largest_lesion

# The contract's code of intraparenchymal hemorrhage.
IPH = 2
# Kothari's partial-slice rule: share of the largest slice area -> weight of the slice.
_FULL_SLICE, _HALF_SLICE = 0.75, 0.25


@dataclass(frozen=True)
class Abc2:
    """The largest lesion's calliper lengths (mm), its ABC/2 and its voxel volume (mL)."""

    a_mm: float
    b_mm: float
    c_mm: float
    abc2_ml: float
    lesion_ml: float


def slice_axis(affine: np.ndarray) -> int:
    """The array axis running closest to the patient's head-foot (RAS z) direction."""
    columns = np.asarray(affine, float)[:3, :3]
    return int(np.argmax(np.abs(columns[2]) / np.linalg.norm(columns, axis=0)))


def _pixel_corners(mask: np.ndarray, in_plane: np.ndarray) -> np.ndarray:
    """Millimetre positions (N, 3) of the four outer corners of every pixel of a 2D mask, with
    `in_plane` (3, 2) the affine's columns of the mask's two axes. Only the outline's pixels are
    taken: inner ones cannot be the extreme points of any direction."""
    outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
    pixels = np.argwhere(outline).astype(float)
    corners = np.concatenate([pixels + offset for offset in
                              ((-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))])
    return corners @ in_plane.T


def _longest_chord(points: np.ndarray) -> tuple[float, np.ndarray]:
    """(length, unit direction) of the largest distance between two of `points` (N, 3)."""
    if len(points) > 3:
        from scipy.spatial import ConvexHull, QhullError

        # The farthest pair lies on the convex hull; the points span a plane, so hull them in
        # their own 2D coordinates.
        centred = points - points.mean(axis=0)
        basis = np.linalg.svd(centred, full_matrices=False)[2][:2]
        try:
            points = points[ConvexHull(centred @ basis.T).vertices]
        except QhullError:  # all on one line: every point stays a candidate
            pass
    gaps = points[:, None, :] - points[None, :, :]
    lengths = np.linalg.norm(gaps, axis=-1)
    i, j = np.unravel_index(int(np.argmax(lengths)), lengths.shape)
    length = float(lengths[i, j])
    return length, gaps[i, j] / length


def abc2(labels: np.ndarray, affine: np.ndarray, subtypes: bool,
         weighted: bool = False) -> Abc2 | None:
    """ABC/2 of the largest intraparenchymal lesion (any lesion when not `subtypes`) of a label
    map on the grid of `affine`; None when there is no such lesion. See the module docstring."""
    mask = np.asarray(labels) == IPH if subtypes else np.asarray(labels) > 0
    if not mask.any():
        return None
    lesion = largest_lesion(mask[bounding_box(mask)])
    columns = np.asarray(affine, float)[:3, :3]
    axis = slice_axis(affine)
    plane_axes = [a for a in range(3) if a != axis]
    in_plane = columns[:, plane_axes]
    # Area of each slice in pixels (every pixel of a slice has the same area).
    areas = lesion.sum(axis=tuple(plane_axes))
    largest = int(np.argmax(areas))
    section = np.take(lesion, largest, axis=axis)
    corners = _pixel_corners(section, in_plane)
    a_mm, along = _longest_chord(corners)
    normal = np.cross(in_plane[:, 0], in_plane[:, 1])
    across = np.cross(normal, along)
    across /= np.linalg.norm(across)
    projected = corners @ across
    b_mm = float(projected.max() - projected.min())
    shares = areas / areas[largest]
    if weighted:
        slices = float(np.sum(shares >= _FULL_SLICE)
                       + 0.5 * np.sum((shares >= _HALF_SLICE) & (shares < _FULL_SLICE)))
    else:
        slices = float(np.count_nonzero(areas))
    # The slice spacing: the step between slice planes along their normal (a tilted gantry's
    # sheared axis steps farther than the planes lie apart).
    c_mm = slices * abs(float(columns[:, axis] @ normal / np.linalg.norm(normal)))
    voxel_mm3 = abs(float(np.linalg.det(columns)))
    return Abc2(a_mm=a_mm, b_mm=b_mm, c_mm=c_mm, abc2_ml=a_mm * b_mm * c_mm / 2.0 / 1000.0,
                lesion_ml=int(lesion.sum()) * voxel_mm3 / 1000.0)


# volumes.csv columns of `abc2_columns`, in order.
ABC2_COLUMNS = ("abc2_lesion_ml", "abc2_ml", "abc2_a_mm", "abc2_b_mm", "abc2_c_mm")


def abc2_columns(labels: np.ndarray, affine: np.ndarray, subtypes: bool) -> dict[str, float | None]:
    """ABC2_COLUMNS of a label map: the lesion's voxel volume and ABC/2 in mL, A, B, C in mm
    (all None when there is no lesion)."""
    result = abc2(labels, affine, subtypes)
    values = (None,) * 5 if result is None else (
        result.lesion_ml, result.abc2_ml, result.a_mm, result.b_mm, result.c_mm)
    return dict(zip(ABC2_COLUMNS, values, strict=True))
