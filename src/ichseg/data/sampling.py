"""Training patches: every draw a function of (seed, epoch, sample index) alone.

Sample `i = step * batch_size + j` of epoch `e` draws from `np.random.SeedSequence([seed, e, i])`
alone: which case and where the patch is cut from its generator, each augmentation from a child
stream of its own (spawned in the fixed order of `config.AUGMENTATIONS`), so that switching one
transform off changes nothing else a sample draws. Whether the patch is centred on hemorrhage is
fixed by `j` (the last ones of every batch, as nnU-Net's oversampling); a share of the others is
centred on the head outside the cranial cavity (neck, face, scalp: tissue as dense as blood that is
not intracranial hemorrhage), which a random patch of a scan cropped to the head seldom centres on,
and a share of the rest on the blood mimics inside it (unlabelled tissue as dense as fresh blood:
the venous sinuses, the partial-volume rim of obliquely cut skull, the falx), where a model that
has learnt "dense means blood" calls hemorrhage in scans without any.
Any batch of any epoch is therefore rebuilt without drawing the ones before it, a resumed run sees
exactly the patches an uninterrupted one would, and ranks of a distributed run each take their
contiguous share of `j` without talking to each other.

Augmentation is plain NumPy/torch driven by those per-sample generators. Rotation and scaling are
one `grid_sample` of the patch's own sampling grid into the whole case, which cuts, rotates,
scales and pads in a single pass over patch-sized memory; MONAI's `RandAffined` would need a
larger pre-cut region and a chain of dictionary transforms, and `benchmarks/data.py` measures it
several times slower per patch on this CPU.

Cases are int16 HU, memory-mapped from the cache (`data.cache`): a sample reads only the region
its patch covers and applies the HU windows to that region, never to a whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from ichseg.config import AUGMENTATIONS, Config
from ichseg.data.cache import PreparedCase, foreground_points
from ichseg.data.ct import window_channels
from ichseg.errors import UsageError

# HU outside a case: below every window, so each channel of the padding is 0, as before windowing.
AIR_HU = np.iinfo(np.int16).min
# A background patch outside the cranial cavity is centred on tissue (the head or neck, not the
# air around them): a voxel above this HU, found among `OUTSIDE_TRIES` random voxels read from
# the memory-mapped case (a few pages, never the whole volume); none found: a random patch.
BODY_HU = -500
OUTSIDE_TRIES = 256
# A blood mimic: an unlabelled voxel inside the cranial cavity in the HU band of fresh blood. On
# the phantoms these are the venous sinuses and the partial-volume rim where a thick slice cuts
# the skull obliquely (the convexity, the skull base), which is where models trained without
# them put false subdural blood; on real scans also the falx and dense vessels. They are a small
# share of a head (0.4-0.6 % of the phantoms' cropped volumes), hence more tries than outside
# the cavity.
MIMIC_HU = (50, 100)
MIMIC_TRIES = 4096


@dataclass(frozen=True)
class Augmentation:
    """Ranges and probabilities of the random transforms: nnU-Net v2's defaults (its
    `get_training_transforms`), but for rotation, narrowed because head scans come in a standard
    orientation and a tilt across 5 mm slices mostly interpolates between them, and for the
    intensity changes, which are the same on every window channel (as a scanner's calibration
    would shift them all) except blur and low resolution, drawn per channel as nnU-Net does."""

    flip_probability: float = 0.5          # per axis
    rotate_probability: float = 0.2
    in_plane_degrees: float = 15.0
    out_of_plane_degrees: float = 5.0      # only when z spacing is at most twice the in-plane one
    # With thicker slices rotation, scaling, blur and low resolution are in-plane: z keeps its
    # slices.
    scale_probability: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    blur_probability: float = 0.2
    blur_channel_probability: float = 0.5  # each channel on its own
    blur_sigma: tuple[float, float] = (0.5, 1.0)   # voxels, drawn per channel and axis
    brightness_probability: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_probability: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    # Downsampled by a zoom (nearest) and back (linear): a coarser scanner or reconstruction.
    low_resolution_probability: float = 0.25
    low_resolution_channel_probability: float = 0.5
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    # Gamma of the inverted channel (1 - (1 - x) ** g): it bends the bright end, where gamma
    # bends the dark end.
    inverted_gamma_probability: float = 0.1
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_probability: float = 0.1
    noise_max_std: float = 0.05            # channels lie in [0, 1]


AUGMENTATION = Augmentation()


def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int],
                      fill: float = 0) -> np.ndarray:
    """The window [start, start + size) of the trailing len(size) axes; outside is `fill`."""
    spatial = array.shape[-len(size):]
    out = np.full((*array.shape[:-len(size)], *size), fill, dtype=array.dtype)
    src, dst = [], []
    for a, n, extent in zip(start, size, spatial, strict=True):
        lo, hi = max(a, 0), min(a + n, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[(..., *dst)] = array[(..., *src)]
    return out


def outside_cavity_voxel(case: PreparedCase, rng: np.random.Generator) -> np.ndarray | None:
    """A random voxel of the head or neck outside the case's cranial cavity, or None (no cavity
    found, or none among the voxels tried)."""
    if case.cavity is None:
        return None
    tried = rng.integers(0, case.hu.shape, size=(OUTSIDE_TRIES, 3))
    at = tuple(tried.T)
    hits = np.flatnonzero((case.hu[at] > BODY_HU) & ~case.cavity[at])
    return tried[hits[0]] if len(hits) else None


def blood_mimic_voxel(case: PreparedCase, rng: np.random.Generator) -> np.ndarray | None:
    """A random blood mimic of the case (see MIMIC_HU), or None (no cavity found, or none among
    the voxels tried)."""
    if case.cavity is None:
        return None
    tried = rng.integers(0, case.hu.shape, size=(MIMIC_TRIES, 3))
    low, high = MIMIC_HU
    at = tuple(tried.T)
    keep = case.cavity[at] & (case.label[at] == 0) & (case.hu[at] >= low) & (case.hu[at] <= high)
    hits = np.flatnonzero(keep)
    return tried[hits[0]] if len(hits) else None


class PatchSampler:
    """Draws training batches as a pure function of (seed, epoch, step, rank, world_size)."""

    def __init__(self, cases: Sequence[PreparedCase], cfg: Config, seed: int,
                 augmentation: Augmentation = AUGMENTATION):
        if not cases:
            raise UsageError("there are no training cases to draw patches from; check the "
                             "dataset folder and data.validation_fraction")
        self.cases = list(cases)
        self.seed = int(seed)
        self.batch_size = cfg.training.batch_size
        self.foreground_fraction = cfg.data.foreground_fraction
        # The last `forced_foreground` samples of every batch are centred on hemorrhage: at least
        # one when the fraction is above 0 (nnU-Net's oversampling, which with 0.33 and batches of
        # two makes the second patch foreground). A batch of one patch keeps a coin per sample.
        fraction, size = self.foreground_fraction, self.batch_size
        self.forced_foreground = max(1, round(size * fraction)) if fraction > 0 and size > 1 else 0
        self.enabled = frozenset(cfg.data.augmentations) if cfg.data.augment else frozenset()
        self.outside_cavity_fraction = cfg.data.outside_cavity_fraction
        # Of the background patches: outside the cavity, then on a mimic, then anywhere.
        self.mimic_below = (self.outside_cavity_fraction
                            + (1 - self.outside_cavity_fraction) * cfg.data.mimic_fraction)
        self.windows = [list(w) for w in cfg.data.windows]
        self.aug = augmentation
        self.spatial_dims = cfg.model.spatial_dims
        self.patch = tuple(int(n) for n in cfg.data.patch_size[:self.spatial_dims])
        self.spacing = np.array(cfg.data.spacing[:self.spatial_dims], float)
        in_plane = min(cfg.data.spacing[:2])
        # Axes that rotation and scaling act on: in-plane only for 2D and for thick slices.
        thick = cfg.data.spacing[2] > 2 * in_plane
        self.transform_dims = 2 if self.spatial_dims == 2 or thick else 3
        # Per case: one (n, 3) array of foreground voxel positions per class present (stored
        # in the cache entry, so the labels of a large dataset are not read to find them).
        self.foreground = [case.foreground if case.foreground is not None
                           else foreground_points(case.label) for case in self.cases]
        self.foreground_cases = [k for k, points in enumerate(self.foreground) if points]

    def batch(self, epoch: int, step: int, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank `rank`'s share of batch `step` of `epoch`: images (b, C, *patch) float32 and
        labels (b, 1, *patch) int64, with b = batch_size / world_size."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} of {world_size} processes is not a valid rank")
        if self.batch_size % world_size:
            raise UsageError(f"setting training.batch_size ({self.batch_size}) must divide by the "
                             f"number of processes ({world_size})")
        share = self.batch_size // world_size
        first = step * self.batch_size + rank * share
        drawn = [self.sample(epoch, first + j) for j in range(share)]
        images = torch.from_numpy(np.stack([image for image, _ in drawn]))
        labels = torch.from_numpy(np.stack([label for _, label in drawn])).long().unsqueeze(1)
        return images, labels

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` of `epoch`: (window channels (C, *patch) float32, labels (*patch)
        uint8)."""
        seeds = np.random.SeedSequence([self.seed, epoch, index])
        rng = np.random.default_rng(seeds)
        # One stream per transform, spawned whether or not it is enabled: a transform switched
        # off leaves every other draw of the sample as it was.
        streams = dict(zip(AUGMENTATIONS, seeds.spawn(len(AUGMENTATIONS)), strict=True))
        draw = {name: np.random.default_rng(streams[name]) for name in sorted(self.enabled)}
        if self.batch_size > 1:
            foreground = index % self.batch_size >= self.batch_size - self.forced_foreground
        else:
            foreground = rng.random() < self.foreground_fraction
        foreground = foreground and bool(self.foreground_cases)
        if foreground:
            case_index = self.foreground_cases[rng.integers(len(self.foreground_cases))]
        else:
            case_index = int(rng.integers(len(self.cases)))
        case = self.cases[case_index]
        image, label = case.hu, case.label
        voxel = None
        if foreground:
            classes = self.foreground[case_index]
            points = classes[rng.integers(len(classes))]
            voxel = points[rng.integers(len(points))]
        else:
            where = rng.random()
            if where < self.outside_cavity_fraction:
                voxel = outside_cavity_voxel(case, rng)
            elif where < self.mimic_below:
                voxel = blood_mimic_voxel(case, rng)
        if self.spatial_dims == 2:
            z = int(voxel[2]) if voxel is not None else int(rng.integers(label.shape[2]))
            image, label = image[:, :, z], label[:, :, z]
        shape = label.shape
        patch = np.array(self.patch)
        lowest = np.minimum(0, np.array(shape) - patch)
        highest = np.maximum(0, np.array(shape) - patch)
        if voxel is not None:
            jitter = rng.integers(-(patch // 4), patch // 4 + 1)
            start = np.clip(voxel[:self.spatial_dims] - patch // 2 + jitter, lowest, highest)
        else:
            start = rng.integers(lowest, highest + 1)

        transform = self._draw_spatial(draw)
        if transform is None:
            patch_image = window_channels(crop_with_padding(image, start, self.patch, AIR_HU),
                                          self.windows)
            patch_label = crop_with_padding(label, start, self.patch)
        else:
            patch_image, patch_label = self._resample_patch(image, label, start, transform)
        if "flip" in draw:
            for axis in range(self.spatial_dims):
                if draw["flip"].random() < self.aug.flip_probability:
                    patch_image = np.flip(patch_image, axis=axis + 1)
                    patch_label = np.flip(patch_label, axis=axis)
        if draw:
            patch_image = self._intensity(np.ascontiguousarray(patch_image), draw)
        return (np.ascontiguousarray(patch_image, dtype=np.float32),
                np.ascontiguousarray(patch_label))

    def _draw_spatial(self, draw: dict[str, np.random.Generator]) -> np.ndarray | None:
        """Voxel-space matrix taking patch offsets to case offsets over the transformed axes
        (x, y for thick slices and 2D; x, y, z otherwise), or None for no rotation or scale."""
        aug = self.aug
        rotate = "rotate" in draw and draw["rotate"].random() < aug.rotate_probability
        scale = "scale" in draw and draw["scale"].random() < aug.scale_probability
        if not (rotate or scale):
            return None
        matrix = np.eye(self.transform_dims)
        if rotate:
            angles = [draw["rotate"].uniform(-aug.in_plane_degrees, aug.in_plane_degrees)]
            if self.transform_dims == 3:
                tilt = aug.out_of_plane_degrees
                angles += [draw["rotate"].uniform(-tilt, tilt) for _ in range(2)]
            # About z (in-plane), then y and x (tilts); 2D keeps the in-plane block.
            rotation = Rotation.from_euler("zyx"[:len(angles)], angles, degrees=True)
            matrix = rotation.as_matrix()[:self.transform_dims, :self.transform_dims]
        if scale:
            # A zoom factor above 1 enlarges the anatomy: the patch samples a smaller region.
            matrix = matrix / draw["scale"].uniform(*aug.scale_range)
        # Rotate in millimetres, not voxels: the voxels need not be square.
        spacing = self.spacing[:self.transform_dims]
        return np.diag(1.0 / spacing) @ matrix @ np.diag(spacing)

    def _resample_patch(self, image: np.ndarray, label: np.ndarray, start: np.ndarray,
                        matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut the rotated/scaled patch around the unrotated window's centre: image linear,
        labels nearest, 0 outside the case.

        Only the region the patch's sampling points touch is cut out first, so the cost is
        patch-sized whatever the case's size. With thick slices the transform is in-plane, and
        every output slice is its input slice transformed alike: one batched 2D `grid_sample`
        (which PyTorch vectorises on CPU; its 3D one is several times slower).
        """
        dims = self.transform_dims
        patch = np.array(self.patch)
        offsets = np.indices(self.patch[:dims], dtype=np.float32).reshape(dims, -1)
        offsets -= ((patch[:dims] - 1) / 2.0).astype(np.float32)[:, None]
        centre = start[:dims] + (patch[:dims] - 1) / 2.0
        coords = matrix.astype(np.float32) @ offsets + centre.astype(np.float32)[:, None]
        corner = np.floor(coords.min(axis=1)).astype(int)
        size = np.ceil(coords.max(axis=1)).astype(int) + 1 - corner
        # Untransformed (slice) axes keep the plain window.
        corner = np.concatenate([corner, start[dims:]])
        size = np.concatenate([size, patch[dims:]])
        region_label = crop_with_padding(label, corner, size)
        local = coords - corner[:dims, None].astype(np.float32)

        labels = region_label[tuple(np.rint(local).astype(np.intp))].reshape(self.patch)
        # grid_sample (align_corners=False) wants [-1, 1] over the edges, last axis first.
        grid = ((2.0 * local + 1.0) / size[:dims, None].astype(np.float32) - 1.0)[::-1]
        grid = torch.from_numpy(np.ascontiguousarray(grid.T)).reshape(1, *self.patch[:dims], dims)
        if dims == self.spatial_dims:
            region = torch.from_numpy(window_channels(crop_with_padding(image, corner, size,
                                                                        AIR_HU), self.windows))
            sampled = F.grid_sample(region.unsqueeze(0), grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=False)[0]
        else:
            # Cut the slices, windowed, straight into (z, C, x, y), the batch layout 2D sampling
            # wants.
            region = crop_with_padding(image, corner, size, AIR_HU)
            slices = torch.from_numpy(np.ascontiguousarray(
                np.moveaxis(window_channels(region, self.windows), -1, 0)))
            sampled = F.grid_sample(slices, grid.expand(len(slices), -1, -1, -1),
                                    mode="bilinear", padding_mode="zeros",
                                    align_corners=False).permute(1, 2, 3, 0)
        return sampled.numpy(), labels

    def _intensity(self, image: np.ndarray, draw: dict[str, np.random.Generator]) -> np.ndarray:
        """Blur, brightness, contrast, low resolution, inverted gamma, gamma and noise, in
        nnU-Net's order (noise last: it is the scanner's, after everything else)."""
        aug = self.aug
        channels = len(image)
        if "blur" in draw and draw["blur"].random() < aug.blur_probability:
            for c in np.flatnonzero(draw["blur"].random(channels) < aug.blur_channel_probability):
                sigmas = draw["blur"].uniform(*aug.blur_sigma, size=self.transform_dims)
                for axis, sigma in enumerate(sigmas):
                    image[c] = gaussian_filter1d(image[c], sigma, axis=axis)
        if "brightness" in draw and draw["brightness"].random() < aug.brightness_probability:
            image *= np.float32(draw["brightness"].uniform(*aug.brightness_range))
        if "contrast" in draw and draw["contrast"].random() < aug.contrast_probability:
            mean = image.mean(axis=tuple(range(1, image.ndim)), keepdims=True)
            image = (image - mean) * np.float32(draw["contrast"].uniform(*aug.contrast_range)) + mean
        np.clip(image, 0.0, 1.0, out=image)
        lowres = draw.get("low_resolution")
        if lowres is not None and lowres.random() < aug.low_resolution_probability:
            for c in np.flatnonzero(lowres.random(channels)
                                    < aug.low_resolution_channel_probability):
                image[c] = self._low_resolution(image[c], lowres.uniform(*aug.low_resolution_zoom))
        inverted = draw.get("inverted_gamma")
        if inverted is not None and inverted.random() < aug.inverted_gamma_probability:
            gamma = np.float32(inverted.uniform(*aug.gamma_range))
            image = 1.0 - (1.0 - image) ** gamma
        if "gamma" in draw and draw["gamma"].random() < aug.gamma_probability:
            image **= np.float32(draw["gamma"].uniform(*aug.gamma_range))
        if "noise" in draw and draw["noise"].random() < aug.noise_probability:
            std = np.float32(draw["noise"].uniform(0.0, aug.noise_max_std))
            image += std * draw["noise"].standard_normal(image.shape, dtype=np.float32)
        return image

    def _low_resolution(self, channel: np.ndarray, zoom: float) -> np.ndarray:
        """One channel down to `zoom` of its size over the transformed axes (nearest) and back
        (linear); thick slices are zoomed in-plane, each slice alike, as one batched 2D call."""
        values = torch.from_numpy(np.ascontiguousarray(channel))
        in_plane = self.transform_dims < channel.ndim
        # (1, 1, *spatial), or (z, 1, x, y) for the slices of a thick-slice patch.
        values = values.permute(2, 0, 1)[:, None] if in_plane else values[None, None]
        size = values.shape[2:]
        smaller = [max(1, round(n * zoom)) for n in size]
        coarse = F.interpolate(values, size=smaller, mode="nearest-exact")
        mode = "bilinear" if len(size) == 2 else "trilinear"
        restored = F.interpolate(coarse, size=size, mode=mode, align_corners=False)
        return (restored[:, 0].permute(1, 2, 0) if in_plane else restored[0, 0]).numpy()


class EpochBatches(Dataset):
    """Batches `start_step .. start_step + steps - 1` of one epoch as a map-style dataset.

    Item k is `sampler.batch(epoch, start_step + k, rank, world_size)`, so a DataLoader
    (batch_size=None) can prefetch with workers in any order and a resumed epoch starts mid-way.
    With `steps_per_epoch`, positions past the epoch's last step run on into the next epochs
    (item k is then step (start_step + k) % steps_per_epoch of epoch
    epoch + (start_step + k) // steps_per_epoch), so one loader serves a whole session.
    """

    def __init__(self, sampler: PatchSampler, epoch: int, start_step: int, steps: int,
                 rank: int = 0, world_size: int = 1, steps_per_epoch: int | None = None):
        self.sampler = sampler
        self.epoch, self.start_step, self.steps = epoch, start_step, steps
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = steps_per_epoch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < self.steps:
            raise IndexError(k)
        epoch, step = self.epoch, self.start_step + k
        if self.steps_per_epoch:
            epoch, step = epoch + step // self.steps_per_epoch, step % self.steps_per_epoch
        return self.sampler.batch(epoch, step, self.rank, self.world_size)
