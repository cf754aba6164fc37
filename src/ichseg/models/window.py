"""Logits of a whole preprocessed volume through MONAI's sliding-window inference.

One function for both places that need it: validation during training and prediction.
"""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ichseg.config import Config


def window_logits(model: nn.Module, image: torch.Tensor, cfg: Config,
                  overlap: float | None = None) -> torch.Tensor:
    """Logits (1, K, x, y, z) of a whole preprocessed volume (1, C, x, y, z): sliding windows of
    the training patch size, blended as `cfg.inference.blend` says. A 2D network sees windows one
    slice thick."""
    patch = list(cfg.data.patch_size)
    two_d = cfg.model.spatial_dims == 2
    if two_d:
        patch[2] = 1

    def network(x: torch.Tensor) -> torch.Tensor:
        return model(x[..., 0])[..., None] if two_d else model(x)

    return sliding_window_inference(
        image, patch, cfg.inference.sw_batch_size, network,
        overlap=cfg.inference.overlap if overlap is None else overlap,
        mode=cfg.inference.blend)
