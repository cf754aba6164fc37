"""Logits of a whole preprocessed volume through MONAI's sliding-window inference.

One function for both places that need it: validation during training and prediction.
"""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ichseg.config import Config

# Windows per forward pass that `inference.sw_batch_size` -1 (auto) gives. On CUDA, two windows
# leave much of a GPU idle between kernel launches (the Mamba stages' small tensors above all),
# and four windows without gradients still need less memory than a training batch of two with
# them. On a CPU one window already keeps every core busy: more only add memory.
AUTO_WINDOWS_CUDA = 4
AUTO_WINDOWS_OTHER = 2


def windows_per_pass(setting: int, device: torch.device) -> int:
    """`inference.sw_batch_size`, or for -1: `AUTO_WINDOWS_CUDA` on CUDA, else
    `AUTO_WINDOWS_OTHER`."""
    if setting > 0:
        return setting
    return AUTO_WINDOWS_CUDA if device.type == "cuda" else AUTO_WINDOWS_OTHER


def window_logits(model: nn.Module, image: torch.Tensor, cfg: Config,
                  overlap: float | None = None) -> torch.Tensor:
    """Logits (1, K, x, y, z) of a whole preprocessed volume (1, C, x, y, z): sliding windows of
    the training patch size, `windows_per_pass` of them through the network at once, blended as
    `cfg.inference.blend` says. A 2D network sees windows one slice thick."""
    patch = list(cfg.data.patch_size)
    two_d = cfg.model.spatial_dims == 2
    if two_d:
        patch[2] = 1

    def network(x: torch.Tensor) -> torch.Tensor:
        return model(x[..., 0])[..., None] if two_d else model(x)

    return sliding_window_inference(
        image, patch, windows_per_pass(cfg.inference.sw_batch_size, image.device), network,
        overlap=cfg.inference.overlap if overlap is None else overlap,
        mode=cfg.inference.blend)
