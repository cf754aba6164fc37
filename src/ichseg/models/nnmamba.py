"""The nnMamba U-Net (Gong et al., arXiv 2402.03526), for 3D volumes or 2D slices.

Encoder: a stem of two conv-norm-ReLU (the first strided) to c channels, then residual stages of
2c, 4c, 8c, ... channels whose first block is strided. Blocks 2..n of a stage add a MICCSS branch
(Mamba-in-convolution with channel-spatial siamese learning) beside their convolutions, and, as in
the authors' code, one MICCSS module (with its single Mamba layer) is shared by all those blocks.
Decoder: interpolating upsampling by each level's strides, the skip scaled by squeeze-excitation,
a double conv-norm-ReLU; logits at full resolution, plus deep-supervision logits at 1/2, 1/4 and
1/8 in training mode. Unlike the authors' head, which ends in a ReLU and so clips every negative
logit to zero, the heads here are plain 1×1 convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ichseg.errors import UsageError
from ichseg.models.mamba import MambaLayer

AXIS_NAMES = "xyz"
# Deep-supervision heads below full resolution: at 1/2, 1/4 and 1/8 (fewer with fewer stages).
MAX_COARSE_HEADS = 3


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


NORMS = ("batch", "instance")


def norm_layer(dims: int, kind: str, channels: int) -> nn.Module:
    """BatchNorm (the paper's) or InstanceNorm with a learned scale and shift (nnU-Net's).

    Instance statistics do not depend on the batch, so a batch of two patches trains and
    predicts with the same normalisation; BatchNorm's running statistics from such batches can
    disagree with a whole scan's at evaluation time.
    """
    if kind == "instance":
        cls = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    raise UsageError(f"model.norm must be one of {', '.join(NORMS)}, not {kind!r}")


def conv_norm_relu(dims: int, in_ch: int, out_ch: int, kernel: int = 3,
                   stride: Sequence[int] | int = 1, norm: str = "batch") -> nn.Sequential:
    """Convolution (no bias: the norm's shift replaces it), normalisation, ReLU."""
    return nn.Sequential(
        _conv(dims)(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        norm_layer(dims, norm, out_ch),
        nn.ReLU(inplace=True),
    )


def double_conv(dims: int, in_ch: int, out_ch: int,
                stride: Sequence[int] | int = 1, norm: str = "batch") -> nn.Sequential:
    """Two 3×3(×3) conv-norm-ReLU, the first one carrying the stride."""
    return nn.Sequential(conv_norm_relu(dims, in_ch, out_ch, stride=stride, norm=norm),
                         conv_norm_relu(dims, out_ch, out_ch, norm=norm))


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear interpolation (trilinear in 3D, bilinear in 2D) to `size`.

    On CUDA under torch's deterministic algorithms, as one matrix product per axis: the backward
    of CUDA's interpolation adds into its gradient with atomics, in an order that changes from
    run to run, which would break a bit-exact resume (`training.deterministic`).
    """
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return interpolate_by_matrices(x, size)
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def interpolate_by_matrices(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """F.interpolate(x, size, mode="(bi|tri)linear", align_corners=False), one axis at a time."""
    for axis, out_size in enumerate(size):
        dim = 2 + axis
        weights = linear_interpolation_matrix(x.shape[dim], out_size, x.device, x.dtype)
        x = torch.movedim(torch.movedim(x, dim, -1) @ weights.T, -1, dim)
    return x


def linear_interpolation_matrix(in_size: int, out_size: int, device, dtype) -> torch.Tensor:
    """(out_size, in_size): row i holds the two weights torch's linear interpolation gives output
    i, whose source coordinate is (i + 1/2) in/out - 1/2, clamped at 0."""
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size)
              - 0.5).clamp_min(0.0)
    low = source.floor().long().clamp_max(in_size - 1)
    high = (low + 1).clamp_max(in_size - 1)
    frac = source - low
    rows = torch.arange(out_size)
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    weights.index_put_((rows, low), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.to(device=device, dtype=dtype)


class MICCSS(nn.Module):
    """Mamba-in-convolution with channel-spatial siamese learning.

    1×1 conv-norm-ReLU; the feature map flattened to tokens in raster order; one Mamba layer run
    on the tokens and on their channel-flipped, token-flipped and doubly flipped copies (the four
    copies go through as one batch); each flipped back, the four averaged, the pre-Mamba features
    added; 1×1 conv-norm-ReLU.
    """

    def __init__(self, dims: int, channels: int, d_state: int, d_conv: int, expand: int,
                 scan_backend: str, norm: str = "batch"):
        super().__init__()
        self.project_in = conv_norm_relu(dims, channels, channels, kernel=1, norm=norm)
        self.mamba = MambaLayer(channels, d_state=d_state, d_conv=d_conv, expand=expand,
                                scan_backend=scan_backend)
        self.project_out = conv_norm_relu(dims, channels, channels, kernel=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.project_in(x)
        batch = features.shape[0]
        tokens = features.flatten(2)  # (batch, channels, tokens), raster order
        # Flipping is its own inverse, so each copy is flipped back along the axes it was
        # flipped on: dim 1 is the channel axis, dim 2 the token axis.
        flips = ((), (2,), (1,), (1, 2))
        copies = torch.cat([tokens.flip(axes) if axes else tokens for axes in flips])
        mixed = self.mamba(copies).split(batch)
        merged = sum(out.flip(axes) if axes else out
                     for out, axes in zip(mixed, flips, strict=True)) / len(flips)
        return self.project_out(merged.reshape(features.shape) + features)


class ResidualBlock(nn.Module):
    """Basic residual block; with a MICCSS module, its output on the block's input joins the sum."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: Sequence[int],
                 miccss: MICCSS | None = None, norm: str = "batch"):
        super().__init__()
        conv = _conv(dims)
        self.conv1 = conv_norm_relu(dims, in_ch, out_ch, stride=stride, norm=norm)
        self.conv2 = nn.Sequential(conv(out_ch, out_ch, 3, padding=1, bias=False),
                                   norm_layer(dims, norm, out_ch))
        self.miccss = miccss
        self.shortcut = None
        if in_ch != out_ch or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False),
                                          norm_layer(dims, norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.miccss is not None:
            out = out + self.miccss(x)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class SqueezeExcitation(nn.Module):
    """Per-channel gates in (0, 1) from the globally pooled features (reduction 16, ≥ 1 unit)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(x.flatten(2).mean(dim=2))
        return x * weights.view(*weights.shape, *([1] * (x.dim() - 2)))


class DecoderLevel(nn.Module):
    """Upsample the coarser features to the skip's size, concatenate the SE-gated skip, double conv."""

    def __init__(self, dims: int, coarse_ch: int, skip_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        self.skip_gate = SqueezeExcitation(skip_ch)
        self.conv = double_conv(dims, coarse_ch + skip_ch, out_ch, norm=norm)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = upsample_to(coarse, skip.shape[2:])
        return self.conv(torch.cat([up, self.skip_gate(skip)], dim=1))


class FullResolutionHead(nn.Module):
    """Full-resolution logits from the decoder features at the stem's resolution.

    Upsampling and then applying a 1×1 convolution equals applying it first and upsampling the
    logits (interpolation is linear and its weights sum to one), so the head runs at the coarse
    resolution and interpolates only `num_classes` channels. No full-resolution convolution: the
    strided stem leaves no full-resolution features to refine with, and on a CPU a 3×3×3
    convolution there costs more than any other layer of the network. Shared with the DynUNet
    baseline so that both networks end the same way.
    """

    def __init__(self, dims: int, channels: int, num_classes: int):
        super().__init__()
        self.logits = _conv(dims)(channels, num_classes, 1)

    def forward(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return upsample_to(self.logits(features), size)


def stage_strides(strides: Sequence[Sequence[int]], dims: int) -> list[tuple[int, ...]]:
    """The config's per-axis strides (stem first), cut to the first `dims` axes."""
    return [tuple(int(s) for s in stride[:dims]) for stride in strides]


class NnMambaUNet(nn.Module):
    """nnMamba segmentation network; see the module docstring for the layout."""

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 32,
                 strides: Sequence[Sequence[int]] = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)),
                 blocks_per_stage: int = 3, spatial_dims: int = 3, deep_supervision: bool = True,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, scan_backend: str = "auto",
                 norm: str = "batch"):
        super().__init__()
        dims = spatial_dims
        self.strides = stage_strides(strides, dims)
        self.deep_supervision = deep_supervision
        num_stages = len(self.strides) - 1
        widths = [base_width * 2 ** level for level in range(num_stages + 1)]

        self.stem = double_conv(dims, in_channels, widths[0], stride=self.strides[0], norm=norm)
        self.stages = nn.ModuleList()
        for level in range(1, num_stages + 1):
            width = widths[level]
            shared = None
            if blocks_per_stage > 1:
                shared = MICCSS(dims, width, d_state, d_conv, expand, scan_backend, norm)
            blocks = [ResidualBlock(dims, widths[level - 1], width, self.strides[level],
                                    norm=norm)]
            blocks += [ResidualBlock(dims, width, width, (1,) * dims, miccss=shared, norm=norm)
                       for _ in range(1, blocks_per_stage)]
            self.stages.append(nn.Sequential(*blocks))

        # decoder[i] produces the features of level i (0 = stem resolution) from level i + 1.
        self.decoder = nn.ModuleList(
            DecoderLevel(dims, widths[level + 1], widths[level], widths[level], norm)
            for level in range(num_stages))
        self.head = FullResolutionHead(dims, widths[0], num_classes)
        # Built only when used: DistributedDataParallel refuses parameters outside the graph.
        num_coarse = min(num_stages, MAX_COARSE_HEADS) if deep_supervision else 0
        self.coarse_heads = nn.ModuleList(
            _conv(dims)(widths[level], num_classes, 1) for level in range(num_coarse))

    @classmethod
    def from_config(cls, cfg) -> NnMambaUNet:
        m = cfg.model
        return cls(in_channels=cfg.in_channels, num_classes=cfg.num_classes,
                   base_width=m.base_width, strides=m.strides,
                   blocks_per_stage=m.blocks_per_stage, spatial_dims=m.spatial_dims,
                   deep_supervision=m.deep_supervision, d_state=m.d_state, d_conv=m.d_conv,
                   expand=m.expand, scan_backend=m.scan_backend, norm=m.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        features = skips.pop()
        per_level = []
        for level in reversed(range(len(self.decoder))):
            features = self.decoder[level](features, skips[level])
            per_level.append(features)
        per_level.reverse()  # per_level[i]: decoder features at level i (i = 0: stem resolution)
        logits = self.head(per_level[0], x.shape[2:])
        if not (self.training and self.deep_supervision):
            return logits
        # The coarse heads cover the finest levels only (1/2, 1/4, 1/8).
        return [logits] + [head(f) for head, f in zip(self.coarse_heads, per_level, strict=False)]


def total_strides(cfg) -> list[int]:
    """Per-axis product of all strides: every input size must be a multiple of it."""
    strides = stage_strides(cfg.model.strides, cfg.model.spatial_dims)
    return [math.prod(axis) for axis in zip(*strides, strict=True)]


def check_input_shape(cfg, spatial_shape: Sequence[int]) -> None:
    """Raise UsageError naming the nearest valid sizes when the strides cannot divide a size.

    A 2D network checks the first two sizes, so the 3-value `data.patch_size` can be passed as is.
    """
    dims = cfg.model.spatial_dims
    shape = [int(s) for s in spatial_shape]
    if len(shape) < dims:
        raise UsageError(f"patch size {shape} has {len(shape)} sizes; the {dims}D network "
                         f"needs {dims} ({', '.join(AXIS_NAMES[:dims])})")
    for index, factor in enumerate(total_strides(cfg)):
        axis, size = AXIS_NAMES[index], shape[index]
        if size > 0 and size % factor == 0:
            continue
        below = size // factor * factor
        above = max(factor, below + factor)
        nearest = f"{below} or {above}" if below > 0 else f"{above}"
        raise UsageError(f"patch size {size} along {axis} is not divisible by {factor} "
                         f"(product of the {axis} strides); nearest valid: {nearest}")
    deepest = [size // factor for size, factor in zip(shape, total_strides(cfg), strict=False)]
    if cfg.model.norm == "instance" and math.prod(deepest) == 1:
        # Instance statistics of a single voxel are undefined (PyTorch refuses them).
        raise UsageError(f"patch size {shape[:dims]} leaves one voxel at the network's deepest "
                         "level, which model.norm=instance cannot normalise; double one of its "
                         "sizes, or set model.norm=batch")
