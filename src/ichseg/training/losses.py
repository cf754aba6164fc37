"""Dice + cross-entropy with deep supervision, as nnU-Net trains (and nnMamba after it).

Each head's logits are compared with the labels brought to that head's size by nearest-neighbour
downsampling; the heads' losses are weighted 1, 1/2, 1/4, 1/8 (full resolution first) and the
weights normalised to sum to 1. Dice is MONAI's soft Dice over the batch (nnU-Net's "batch Dice",
which stays defined on patches without hemorrhage), without the background channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn


def dice_ce() -> DiceCELoss:
    """The Dice + CE term of one head: softmax over classes, labels one-hot encoded."""
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)


class DeepSupervisionLoss(nn.Module):
    """loss(logits, labels): `logits` one tensor or the list [full, 1/2, 1/4, ...]; labels (b, 1, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.term = dice_ce()

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor],
                labels: torch.Tensor) -> torch.Tensor:
        heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        weights = [0.5 ** i for i in range(len(heads))]
        total = sum(weights)
        loss = None
        for weight, head in zip(weights, heads, strict=True):
            target = labels
            if head.shape[2:] != labels.shape[2:]:
                target = F.interpolate(labels.float(), size=head.shape[2:], mode="nearest").long()
            # The loss is computed in float32 even when the network ran under autocast.
            term = self.term(head.float(), target) * (weight / total)
            loss = term if loss is None else loss + term
        return loss
