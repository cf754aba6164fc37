"""Segmentation metrics of one case, in millimetres, with the contract's empty-mask conventions.

Surface metrics follow DeepMind's surface-distance library, which the INSTANCE 2022 challenge's
evaluation code uses: the surface is made of surface elements (surfels) on the voxel-corner grid,
each weighted by its area in mm² for the voxel spacing, so a 0.45 x 0.45 x 5 mm scan's long
side faces count by their real area instead of one vote per boundary voxel. MONAI computes these
surfels and their distances (`get_edge_surface_distance(use_subvoxels=True)`), once per mask
pair; NSD at every tolerance, HD95 and the maximum HD are read off the same arrays:
- NSD at tolerance t: the area of both surfaces lying within t mm of the other surface, over the
  area of both (DeepMind's `compute_surface_dice_at_tolerance`). `nsd` uses
  DEFAULT_NSD_TOLERANCE_MM, INSTANCE 2022's 0.42 mm, unless the caller gives another;
- HD95: in each direction, the distance below which 95 % of the surface area lies; the larger of
  the two (DeepMind's `compute_robust_hausdorff(.., 95)`); the maximum HD is the same at 100 %,
  INSTANCE 2022's "HausdorffDistance".
`DEFINITIONS` says this per key; `evaluate` writes it into its report.

Conventions (docs/CONTRACT.md, and the INSTANCE 2022 challenge where the contract is silent):
- both masks empty: Dice 1, HD 0, NSD 1, lesion F1 1, relative volume difference 0;
- one mask empty: Dice 0, NSD 0, lesion F1 0, and both Hausdorff distances are the diagonal of the
  image's extent (shape x spacing) in mm, the worst distance the image allows, so that a missed
  case weighs on the mean instead of vanishing from it as an infinity or NaN would;
- relative volume difference (pred - gt) / gt, and its absolute value (INSTANCE 2022 reports
  |RVD|), are undefined for an empty ground truth with a non-empty prediction: NaN, which the
  summaries skip.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage

from ichseg.data.masks import CONNECTIVITY_26, bounding_box

# INSTANCE 2022's NSD tolerance (its evaluation code calls the surface Dice at 0.42 mm).
DEFAULT_NSD_TOLERANCE_MM = 0.42
# A second, fixed NSD column: 1 mm, the tolerance `nsd` had before it followed INSTANCE 2022.
EXTRA_NSD_TOLERANCE_MM = 1.0
# The metric names of one case, in the order of the CSV columns (after `case` and `class`).
METRIC_NAMES = ("dice", "hd95", "hd_max", "nsd", "nsd_1", "rvd", "abs_rvd", "volume_error_ml",
                "lesion_f1", "gt_ml", "pred_ml")
# What each key means, for the report (`evaluate` adds the NSD tolerance it used).
DEFINITIONS = {
    "dice": "2|P∩G| / (|P| + |G|) on voxels; 1 when both masks are empty",
    "hd95": "DeepMind surface-distance robust Hausdorff at 95 %: per direction the distance "
            "within which 95 % of the surface area (voxel-corner surfels weighted by area) lies, "
            "the larger direction, in mm",
    "hd_max": "maximum Hausdorff distance between the surfaces in mm (DeepMind surface-distance "
              "at 100 %, INSTANCE 2022's HausdorffDistance)",
    "nsd": "normalised surface Dice at the tolerance named in nsd_tolerance_mm: the share of both "
           "surfaces' area (voxel-corner surfels weighted by area, as DeepMind's "
           "surface-distance and INSTANCE 2022 compute it) within the tolerance of the other",
    "nsd_1": "the same normalised surface Dice at 1 mm",
    "rvd": "signed relative volume difference (pred - gt) / gt",
    "abs_rvd": "|rvd|, the relative volume difference INSTANCE 2022 reports",
    "volume_error_ml": "pred - gt volume in mL",
    "lesion_f1": "F1 of 26-connected lesions, a lesion found when it overlaps any of the other",
    "gt_ml": "ground-truth volume in mL",
    "pred_ml": "predicted volume in mL",
    "empty masks": "both empty: Dice, NSD and lesion F1 1, HD 0, RVD 0; one empty: Dice, NSD and "
                   "lesion F1 0, HD the image's diagonal in mm; RVD against an empty ground "
                   "truth is undefined (null, skipped by the summaries)",
}


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


def _area_quantile(distances: torch.Tensor, areas: torch.Tensor, q: float) -> float:
    """The smallest distance within which a share `q` of the surface area lies (DeepMind's
    robust Hausdorff of one direction)."""
    order = torch.argsort(distances)
    distances, areas = distances[order].double(), areas[order].double()
    cumulative = torch.cumsum(areas, 0) / areas.sum()
    index = int(torch.searchsorted(cumulative, torch.tensor([q], dtype=torch.float64)))
    return float(distances[min(index, len(distances) - 1)])


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                    tolerances: Sequence[float] = (DEFAULT_NSD_TOLERANCE_MM,),
                    ) -> dict[str, float]:
    """HD95, maximum HD and NSD at each tolerance (keys `nsd_<tol>`) between two boolean masks,
    from area-weighted surface elements (see the module docstring); distances in mm."""
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
        (pred_edges, gt_edges), (pred_to_gt, gt_to_pred), (pred_areas, gt_areas) = \
            get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(gt),
                                      distance_metric="euclidean", use_subvoxels=True,
                                      spacing=[float(s) for s in spacing], symmetric=True)
    # The areas come as maps over the corner grid; the distances list its surfels in order.
    pred_areas, gt_areas = pred_areas[pred_edges], gt_areas[gt_edges]
    result = {
        "hd95": max(_area_quantile(pred_to_gt, pred_areas, 0.95),
                    _area_quantile(gt_to_pred, gt_areas, 0.95)),
        "hd_max": float(max(pred_to_gt.max(), gt_to_pred.max())),
    }
    total = float(pred_areas.sum() + gt_areas.sum())
    for t in tolerances:
        within = float(pred_areas[pred_to_gt <= t].sum() + gt_areas[gt_to_pred <= t].sum())
        result[f"nsd_{t:g}"] = within / total
    return result


def lesion_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """F1 of lesion detection: 26-connected components, a component that overlaps any is a hit.

    Recall counts ground-truth lesions touched by the prediction; precision counts predicted
    lesions touching the ground truth. Both empty: 1; one empty: 0.
    """
    if not pred.any() and not gt.any():
        return 1.0
    pred, gt = _crop_to_union(pred, gt)
    gt_labels, gt_count = ndimage.label(gt, structure=CONNECTIVITY_26)
    pred_labels, pred_count = ndimage.label(pred, structure=CONNECTIVITY_26)
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
                 voxel_volume_mm3: float,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """Every metric of one pair of boolean masks, keyed by METRIC_NAMES (see DEFINITIONS)."""
    if not nsd_tolerance_mm > 0:
        raise ValueError(f"the NSD tolerance must be above 0 mm, got {nsd_tolerance_mm}")
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} and {gt.shape}")
    gt_ml, pred_ml = mask_volume_ml(gt, voxel_volume_mm3), mask_volume_ml(pred, voxel_volume_mm3)
    if gt_ml > 0:
        rvd = (pred_ml - gt_ml) / gt_ml
    else:
        rvd = 0.0 if pred_ml == 0 else float("nan")
    tolerances = (nsd_tolerance_mm, EXTRA_NSD_TOLERANCE_MM)
    surface = surface_metrics(pred, gt, spacing, tolerances)
    return {
        "dice": dice(pred, gt),
        "hd95": surface["hd95"],
        "hd_max": surface["hd_max"],
        "nsd": surface[f"nsd_{nsd_tolerance_mm:g}"],
        "nsd_1": surface[f"nsd_{EXTRA_NSD_TOLERANCE_MM:g}"],
        "rvd": rvd,
        "abs_rvd": abs(rvd),
        "volume_error_ml": pred_ml - gt_ml,
        "lesion_f1": lesion_f1(pred, gt),
        "gt_ml": gt_ml,
        "pred_ml": pred_ml,
    }
