"""How far to trust one case's prediction: agreement between test-time-augmentation passes.

With mirror test-time augmentation every pass (the scan as it is, then mirrored along each axis)
predicts its own hemorrhage mask; a case whose passes disagree is one the network is unsure of.
Measured on the network grid, before postprocessing, with `consensus` = the argmax of the
passes' mean probabilities (the prediction itself):

- `tta_agreement`: the mean Dice between each pass's hemorrhage mask (label > 0) and the consensus
  (1 when both are empty);
- `volume_spread_ml`: the largest minus the smallest hemorrhage volume of the passes;
- `unstable`: agreement below `inference.unstable_agreement`, or a spread above
  `inference.unstable_volume_spread` times the passes' mean volume (counted as at least 1 mL, so a
  speck of a few voxels in one pass does not flag a case on its own).

Without TTA there are no passes to compare: `confidence` is then the probability-based score and
`unstable` is left empty (not measured). The probability-based score, always reported, is
`mean_probability`: the mean over the predicted hemorrhage of the winning class's probability (an
empty prediction: the background's probability where hemorrhage came closest, i.e. one minus
the highest hemorrhage probability anywhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ichseg.config import InferenceConfig
from ichseg.data.ct import PreprocessInfo, restore_to_native
from ichseg.evaluation.metrics import dice

# The floor (mL) of the volume a spread is measured against.
_SPREAD_FLOOR_ML = 1.0
# volumes.csv columns, in order.
COLUMNS = ("confidence", "confidence_basis", "tta_agreement", "volume_spread_ml",
           "mean_probability", "unstable")


class CaseConfidence:
    """Called with each pass's class probabilities (1, K, x, y, z) by `class_probabilities`; then
    `measure(mean probabilities, info)` fills `row` (the COLUMNS) and, when asked, `uncertainty`
    (the per-voxel map on the scan's grid)."""

    def __init__(self, settings: InferenceConfig, with_map: bool = False):
        self.settings = settings
        self.with_map = with_map
        self.pass_masks: list[np.ndarray] = []
        self.row: dict[str, Any] = {}
        self.uncertainty: np.ndarray | None = None

    def __call__(self, probabilities: torch.Tensor) -> None:
        self.pass_masks.append((probabilities[0].argmax(0) > 0).cpu().numpy())

    def measure(self, probabilities: np.ndarray, info: PreprocessInfo) -> dict[str, Any]:
        """Fill `row` (and `uncertainty`) from the passes seen and their mean (K, x, y, z)."""
        winning = probabilities.max(axis=0)
        consensus = probabilities.argmax(axis=0) > 0
        if consensus.any():
            mean_probability = float(winning[consensus].mean())
        else:
            mean_probability = 1.0 - float((1.0 - probabilities[0]).max())
        row: dict[str, Any] = {"mean_probability": mean_probability, "tta_agreement": None,
                               "volume_spread_ml": None, "unstable": None,
                               "confidence": mean_probability,
                               "confidence_basis": "mean probability"}
        if len(self.pass_masks) > 1:
            voxel_ml = abs(float(np.linalg.det(info.network_affine[:3, :3]))) / 1000.0
            volumes = np.array([np.count_nonzero(m) for m in self.pass_masks]) * voxel_ml
            agreement = float(np.mean([dice(m, consensus) for m in self.pass_masks]))
            spread = float(volumes.max() - volumes.min())
            s = self.settings
            row.update(tta_agreement=agreement, volume_spread_ml=spread, confidence=agreement,
                       confidence_basis=f"agreement of {len(self.pass_masks)} TTA passes",
                       unstable=bool(agreement < s.unstable_agreement or spread > (
                           s.unstable_volume_spread * max(volumes.mean(), _SPREAD_FLOOR_ML))))
        self.row = row
        if self.with_map:
            # 1 - the winning class's probability, interpolated onto the scan's voxels.
            self.uncertainty = restore_to_native((1.0 - winning).astype(np.float32), info, order=1)
        return row
