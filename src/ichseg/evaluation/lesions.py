"""Lesions: the 26-connected components of a mask, as lesion F1 counts them.

Shared by the postprocessing (removing small components, keeping the largest) and ABC/2 (the
largest lesion), so that all three agree on what one lesion is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ichseg.evaluation.metrics import _CONNECTIVITY_26


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component index per voxel, 0 outside; voxel count of each component 1..n) of a 3D mask."""
    components, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_CONNECTIVITY_26)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return components, sizes


def largest_lesion(mask: np.ndarray) -> np.ndarray:
    """The largest component of a 3D mask (boolean, same shape); all False when it is empty."""
    components, sizes = label_lesions(mask)
    if sizes.size == 0:
        return np.zeros(np.shape(mask), dtype=bool)
    return components == int(np.argmax(sizes)) + 1


def lesion_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a mask's voxels (a slice per axis), None when it is empty."""
    boxes = ndimage.find_objects(np.asarray(mask, dtype=np.uint8))
    return boxes[0] if boxes else None
