"""MONAI's DynUNet (the nnU-Net architecture) sized to match the nnMamba of the same config.

Same strides as nnMamba, strided first convolution included, the same norm, and filters
(w, 2w, 4w, ...) with w chosen so that the parameter count is the nnMamba's as near as a whole w
allows. Outputs follow nnMamba's convention, so both feed one loss: full-resolution logits from
the same `FullResolutionHead`, and in training mode with deep supervision the list
`[full, 1/2, 1/4, 1/8]`, each at its own resolution. (DynUNet itself would interpolate its
deep-supervision maps to full size and stack them.)
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import DynUNet
from torch import nn

from ichseg.errors import UsageError
from ichseg.models.nnmamba import (
    MAX_COARSE_HEADS,
    FullResolutionHead,
    NnMambaUNet,
    stage_strides,
)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class DynUNetBaseline(nn.Module):
    """DynUNet whose decoder features at the stem's resolution feed nnMamba's output heads."""

    def __init__(self, in_channels: int, num_classes: int, strides, width: int,
                 spatial_dims: int = 3, deep_supervision: bool = True, norm: str = "batch"):
        super().__init__()
        strides = stage_strides(strides, spatial_dims)
        if len(strides) < 3:
            raise UsageError("setting model.strides needs at least 3 entries (the stem and two "
                             "stages) for model.name dynunet")
        num_stages = len(strides) - 1
        filters = [width * 2 ** level for level in range(num_stages + 1)]
        self.deep_supervision = deep_supervision
        # DynUNet's own supervision heads sit at levels 1..n (1/4, 1/8); level 0 (1/2) is its
        # output block applied to the stem-resolution features.
        self.num_coarse = min(num_stages, MAX_COARSE_HEADS) if deep_supervision else 0
        self.net = DynUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
            kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=strides[1:],
            filters=filters, deep_supervision=self.num_coarse > 1,
            # nnMamba's InstanceNorm has a learned scale and shift; MONAI's has none by default.
            norm_name=(norm, {"affine": True}) if norm == "instance" else norm,
            deep_supr_num=max(1, self.num_coarse - 1))
        if not deep_supervision:
            # Unused without deep supervision (FullResolutionHead gives the logits); removing it
            # keeps every parameter in the graph, which DistributedDataParallel requires.
            self.net.output_block = nn.Identity()
        self.head = FullResolutionHead(spatial_dims, filters[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        # skip_layers is DynUNet's whole encoder-decoder; it leaves the deep-supervision maps of
        # levels 1.. in `net.heads`, at their own resolution.
        features = self.net.skip_layers(x)
        logits = self.head(features, x.shape[2:])
        if not (self.training and self.deep_supervision):
            return logits
        return [logits, self.net.output_block(features), *self.net.heads[:self.num_coarse - 1]]


def matching_width(cfg) -> int:
    """The DynUNet base width whose parameter count is nearest the config's nnMamba's.

    Counted on the meta device: nothing is allocated and no random number is drawn.
    """
    m = cfg.model

    def count(width: int) -> int:
        with torch.device("meta"):
            return parameter_count(DynUNetBaseline(cfg.in_channels, cfg.num_classes, m.strides,
                                                   width, m.spatial_dims, m.deep_supervision,
                                                   m.norm))

    with torch.device("meta"):
        target = parameter_count(NnMambaUNet.from_config(cfg))
    # The count grows about as width², so one step of that estimate lands within ±1 of the best.
    guess = max(1, round(m.base_width * math.sqrt(target / count(m.base_width))))
    candidates = range(max(1, guess - 1), guess + 2)
    return min(candidates, key=lambda width: abs(count(width) - target))


def build_dynunet(cfg) -> DynUNetBaseline:
    m = cfg.model
    return DynUNetBaseline(cfg.in_channels, cfg.num_classes, m.strides, matching_width(cfg),
                           m.spatial_dims, m.deep_supervision, m.norm)
