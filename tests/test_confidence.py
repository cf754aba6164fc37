"""A confidence per case: agreement and volume spread of the TTA passes, the unstable flag, the
probability-based score without TTA, and the uncertainty map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichseg.config import InferenceConfig
from ichseg.data.ct import PreprocessInfo
from ichseg.inference.confidence import CaseConfidence

SHAPE = (20, 20, 10)


def _info() -> PreprocessInfo:
    """A network grid of 2 x 2 x 5 mm voxels (0.02 mL) covering the whole native scan."""
    return PreprocessInfo(native_shape=SHAPE, native_affine=np.diag([2.0, 2.0, 5.0, 1.0]),
                          orientation=np.array([[0, 1], [1, 1], [2, 1]], float),
                          crop_start=(0, 0, 0), crop_stop=SHAPE, resampled_shape=SHAPE)


def _probabilities(mask: np.ndarray, confident: float = 0.9) -> np.ndarray:
    hemorrhage = np.where(mask, confident, 1 - confident).astype(np.float32)
    return np.stack([1 - hemorrhage, hemorrhage])


def _measure(pass_masks: list[np.ndarray], consensus: np.ndarray, **settings) -> dict:
    confidence = CaseConfidence(InferenceConfig(**settings), with_map=True)
    for mask in pass_masks:
        confidence(torch.from_numpy(_probabilities(mask))[None])
    return confidence.measure(_probabilities(consensus), _info()), confidence


def test_agreeing_passes_are_stable():
    bleed = np.zeros(SHAPE, bool)
    bleed[5:15, 5:15, 2:8] = True  # 600 voxels, 12 mL
    row, confidence = _measure([bleed] * 4, bleed)
    assert row["tta_agreement"] == 1.0 and row["volume_spread_ml"] == 0.0
    assert row["unstable"] is False and row["confidence"] == 1.0
    assert row["confidence_basis"] == "agreement of 4 TTA passes"
    assert row["mean_probability"] == pytest.approx(0.9)
    # The map: 1 - the winning probability, on the scan's grid.
    assert confidence.uncertainty.shape == SHAPE
    assert confidence.uncertainty == pytest.approx(np.full(SHAPE, 0.1), abs=1e-6)


def test_passes_that_disagree_on_volume_or_place_flag_the_case():
    bleed = np.zeros(SHAPE, bool)
    bleed[5:15, 5:15, 2:8] = True
    half = bleed.copy()
    half[5:15, 5:15, 5:8] = False  # one pass sees half of it: 6 mL spread of a 10.5 mL mean
    row, _ = _measure([bleed, bleed, bleed, half], bleed)
    assert row["volume_spread_ml"] == pytest.approx(6.0)
    assert row["tta_agreement"] == pytest.approx((3 + 2 * 300 / 900) / 4)
    assert row["tta_agreement"] > 0.8 and row["unstable"] is True  # flagged by the spread
    assert _measure([bleed, bleed, bleed, half], bleed, unstable_volume_spread=0.6)[0][
        "unstable"] is False
    elsewhere = np.zeros(SHAPE, bool)
    elsewhere[0:4, 0:4, 0:2] = True  # a pass putting a 0.64 mL bleed somewhere else
    moved = np.zeros(SHAPE, bool)
    moved[16:20, 16:20, 8:10] = True
    row, _ = _measure([elsewhere, elsewhere, moved, moved], elsewhere)
    assert row["volume_spread_ml"] == 0.0 and row["tta_agreement"] == 0.5
    assert row["unstable"] is True  # flagged by the agreement
    # A speck of one voxel in one pass of an empty case: under the 1 mL floor of the spread.
    speck = np.zeros(SHAPE, bool)
    speck[3, 3, 3] = True
    empty = np.zeros(SHAPE, bool)
    row, _ = _measure([empty] * 9 + [speck], empty)
    assert row["tta_agreement"] == 0.9 and row["unstable"] is False


def test_without_tta_the_score_is_the_mean_probability():
    bleed = np.zeros(SHAPE, bool)
    bleed[5:10, 5:10, 2:4] = True
    row, _ = _measure([bleed], bleed)
    assert row["confidence_basis"] == "mean probability"
    assert row["confidence"] == pytest.approx(0.9)
    assert row["tta_agreement"] is None and row["unstable"] is None
    # Nothing predicted: one minus the highest hemorrhage probability anywhere.
    row, _ = _measure([np.zeros(SHAPE, bool)], np.zeros(SHAPE, bool))
    assert row["confidence"] == pytest.approx(0.9)
