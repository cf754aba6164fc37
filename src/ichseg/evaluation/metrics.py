"""Segmentation metrics of one case, in millimetres, with the contract's empty-mask conventions.

Surface metrics come from MONAI's edge and surface-distance code (`get_edge_surface_distance`),
called once per mask pair: HD95, maximum HD and NSD at every tolerance are then read off the same
two arrays of directed distances, exactly as `compute_hausdorff_distance` and
`compute_surface_dice` would compute them (the tests check that they agree), without running the
distance transform once per metric.

Conventions (docs/CONTRACT.md, and the INSTANCE 2022 challenge where the contract is silent):
- both masks empty: Dice 1, HD 0, NSD 1, lesion F1 1, relative volume difference 0;
- one mask empty: Dice 0, NSD 0, lesion F1 0, and both Hausdorff distances are the diagonal of the
  image's extent (shape x spacing) in mm, the worst distance the image allows, so that a missed
  case weighs on the mean instead of vanishing from it as an infinity or NaN would;
- relative volume difference (pred - gt) / gt is undefined for an empty ground truth with a
  non-empty prediction: NaN, which the summaries skip.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage

from ichseg.data.masks import bounding_box

# NSD tolerances in mm: 1 mm (the default `nsd`) and INSTANCE 2022's 0.42 mm.
NSD_TOLERANCES_MM = (1.0, 0.42)
# The metric names of one case, in the order of the CSV columns (after `case` and `class`).
METRIC_NAMES = ("dice", "hd95", "hd_max", "nsd", "nsd_0.42", "rvd", "volume_error_ml",
                "lesion_f1", "gt_ml", "pred_ml")
# 26-connectivity: voxels touching by a face, an edge or a corner belong to the same lesion.
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice overlap of two boolean masks (NumPy arrays, or torch tensors on any device: the
    validation of training); 1 when both are empty."""
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & gt).sum()) / total


def mask_volume_ml(mask: np.ndarray, voxel_volume_mm3: float) -> float:
    """Volume of a boolean mask in mL (1 mL = 1000 mm³)."""
    return int(np.count_nonzero(mask)) * voxel_volume_mm3 / 1000.0


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's extent diagonal: the HD reported when exactly one mask is empty."""
    return float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)))


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one voxel (within the image).

    The margin keeps every boundary voxel's neighbourhood, so edges, distances and connected
    components are those of the whole image, at a fraction of the cost on a 512 x 512 scan.
    """
    box = tuple(slice(max(side.start - 1, 0), side.stop + 1)
                for side in bounding_box(pred | gt))
    return pred[box], gt[box]


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                    tolerances: Sequence[float] = NSD_TOLERANCES_MM) -> dict[str, float]:
    """HD95, maximum HD and NSD at each tolerance (keys `nsd_<tol>`) between two boolean masks.

    Distances are in mm along each axis' own spacing. HD95 follows MONAI: the larger of the two
    directed 95th percentiles. NSD is the share of both masks' boundary voxels that lie within the
    tolerance of the other mask's boundary.
    """
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return {"hd95": 0.0, "hd_max": 0.0, **{f"nsd_{t:g}": 1.0 for t in tolerances}}
    if pred_empty or gt_empty:
        worst = image_diagonal_mm(pred.shape, spacing)
        return {"hd95": worst, "hd_max": worst, **{f"nsd_{t:g}": 0.0 for t in tolerances}}
    pred, gt = _crop_to_union(pred, gt)
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` argument internally.
        warnings.simplefilter("ignore", FutureWarning)
        _, (pred_to_gt, gt_to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(gt), distance_metric="euclidean",
            spacing=[float(s) for s in spacing], symmetric=True)
    result = {
        "hd95": float(max(torch.quantile(pred_to_gt, 0.95), torch.quantile(gt_to_pred, 0.95))),
        "hd_max": float(max(pred_to_gt.max(), gt_to_pred.max())),
    }
    boundary = len(pred_to_gt) + len(gt_to_pred)
    for t in tolerances:
        within = int((pred_to_gt <= t).sum()) + int((gt_to_pred <= t).sum())
        result[f"nsd_{t:g}"] = within / boundary
    return result


def lesion_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """F1 of lesion detection: 26-connected components, a component that overlaps any is a hit.

    Recall counts ground-truth lesions touched by the prediction; precision counts predicted
    lesions touching the ground truth. Both empty: 1; one empty: 0.
    """
    if not pred.any() and not gt.any():
        return 1.0
    pred, gt = _crop_to_union(pred, gt)
    gt_labels, gt_count = ndimage.label(gt, structure=_CONNECTIVITY_26)
    pred_labels, pred_count = ndimage.label(pred, structure=_CONNECTIVITY_26)
    if gt_count == 0 or pred_count == 0:
        return 0.0
    overlap = np.logical_and(pred, gt)
    gt_hit = len(np.unique(gt_labels[overlap]))
    pred_hit = len(np.unique(pred_labels[overlap]))
    recall, precision = gt_hit / gt_count, pred_hit / pred_count
    if recall + precision == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                 voxel_volume_mm3: float) -> dict[str, float]:
    """Every metric of one pair of boolean masks, keyed by METRIC_NAMES (`nsd` is at 1 mm)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} and {gt.shape}")
    gt_ml, pred_ml = mask_volume_ml(gt, voxel_volume_mm3), mask_volume_ml(pred, voxel_volume_mm3)
    if gt_ml > 0:
        rvd = (pred_ml - gt_ml) / gt_ml
    else:
        rvd = 0.0 if pred_ml == 0 else float("nan")
    surface = surface_metrics(pred, gt, spacing)
    return {
        "dice": dice(pred, gt),
        "hd95": surface["hd95"],
        "hd_max": surface["hd_max"],
        "nsd": surface["nsd_1"],
        "nsd_0.42": surface["nsd_0.42"],
        "rvd": rvd,
        "volume_error_ml": pred_ml - gt_ml,
        "lesion_f1": lesion_f1(pred, gt),
        "gt_ml": gt_ml,
        "pred_ml": pred_ml,
    }
