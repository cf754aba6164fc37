"""What a mask or label map measures on its own grid: the bounding box of its voxels, the volume
of each class in mL, and its lesions. Used by prediction, evaluation, restoring and the pictures.

A lesion is a 26-connected component (voxels touching by a face, an edge or a corner), one
definition for lesion F1, the postprocessing, ABC/2 and the slices an overlay shows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def bounding_box(array: np.ndarray, threshold: float = 0,
                 axes: tuple[int, ...] | None = None) -> tuple[slice, ...] | None:
    """The bounding box of the voxels above `threshold` (None if there are none) along `axes`
    (default all); the other axes are given whole.

    Reduced first over the axis with the largest stride, whose planes lie whole in memory: numpy
    then compares long contiguous runs, about 20x faster on a (512, 512, 32) scan than reducing
    over its short innermost axis, which a plain `any(axis=(0, 1))` does. When that axis's own
    extent is not wanted, this one pass is all.
    """
    axes = tuple(range(array.ndim)) if axes is None else axes
    # Mirrored views (reoriented scans) have negative strides and miss numpy's fast loops.
    mirrored = [axis for axis in range(array.ndim) if array.strides[axis] < 0]
    array = np.flip(array, axis=mirrored) if mirrored else array
    outer = int(np.argmax(np.abs(array.strides)))
    inner = tuple(axis for axis in range(array.ndim) if axis != outer)
    plane = array.max(axis=outer) > threshold
    if not plane.any():
        return None
    profiles = {outer: array.max(axis=inner) > threshold} if outer in axes else {}
    for position, axis in enumerate(inner):
        profiles[axis] = plane.any(axis=tuple(p for p in range(plane.ndim) if p != position))
    box = []
    for axis in range(array.ndim):
        if axis not in axes:
            box.append(slice(0, array.shape[axis]))
            continue
        hits = np.flatnonzero(profiles[axis])
        start, stop = int(hits[0]), int(hits[-1]) + 1
        if axis in mirrored:
            start, stop = array.shape[axis] - stop, array.shape[axis] - start
        box.append(slice(start, stop))
    return tuple(box)


def label_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float,
                     class_names: Mapping[int, str]) -> dict[str, float]:
    """{"total": any label > 0, then one entry per class name} in mL."""
    # One comparison per class rather than a bincount: bincount widens the 8 M uint8 voxels of
    # a 512 x 512 x 32 scan to 64-bit first, 30 times slower.
    labels = np.asarray(labels)
    ml = voxel_volume_mm3 / 1000.0
    volumes = {"total": np.count_nonzero(labels > 0) * ml}
    for code, name in class_names.items():
        volumes[name] = np.count_nonzero(labels == code) * ml
    return volumes


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component index per voxel, 0 outside; voxel count of each component 1..n) of a 3D mask."""
    components, count = ndimage.label(np.asarray(mask, dtype=bool), structure=CONNECTIVITY_26)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return components, sizes


def largest_lesion(mask: np.ndarray) -> np.ndarray:
    """The largest component of a 3D mask (boolean, same shape); all False when it is empty."""
    components, sizes = label_lesions(mask)
    if sizes.size == 0:
        return np.zeros(np.shape(mask), dtype=bool)
    return components == int(np.argmax(sizes)) + 1
