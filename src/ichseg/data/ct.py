"""CT preprocessing: one canonical orientation, crop to the head, resampling, HU windows.

The network always sees the same grid: the scan is reoriented to the closest RAS axis order,
cropped to the head's bounding box, resampled to `data.spacing` and turned into one [0, 1]
channel per HU window. `PreprocessInfo` records every step so that `restore_to_native` can put a
network-grid prediction back onto exactly the input's voxel grid.

Resampling (measured in `benchmarks/data.py`): an axis shrunk by more than `AREA_ZOOM` (1.5x)
is area-averaged: each output voxel is the mean of the input over its own footprint (fractional
at the edges), which is what a thicker slice or a larger pixel records, so a 1 mm series taken to
5 mm matches a 5 mm acquisition instead of keeping one slice in five (`benchmarks/thin_slices.py`).
The other axes are interpolated linearly with torch's `interpolate` (several times faster than
`scipy.ndimage.zoom` at the same order), including a thick-slice z axis changed a little (4.5 mm to
5 mm), where nearest neighbour would duplicate or drop whole slices.
Labels keep their volume (`resample_labels`): along area-averaged axes the labelled share of
each output voxel is averaged the same way, and the voxels whose share reaches the level that
keeps the labelled volume are labelled, each with the code of the largest share; along the
other axes labels are sampled by nearest neighbour (`nearest-exact`, whose voxel centres match
the linear mode's), so codes are never blended.
The way back (`restore_to_native`, `restore_argmax`) interpolates the network's output onto the
native grid linearly, as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ichseg.config import DataConfig
from ichseg.data.io import Volume
from ichseg.data.layouts import LABEL_MAPPINGS, LabelMapping
from ichseg.data.masks import bounding_box
from ichseg.errors import UsageError

# Everything denser than fat-free air is "body"; the head holder and blankets are thin and are
# cut off by the opening and by keeping only the largest connected part.
HEAD_THRESHOLD_HU = -500.0
# Margin kept around the head's bounding box, so that scalp and a little air stay in view.
HEAD_MARGIN_MM = 10.0
# The head mask is found on a grid of about this in-plane spacing: a bounding box with a 10 mm
# margin does not need full resolution, and a 512 x 512 scan is 16 times cheaper at 2 mm.
HEAD_MASK_SPACING_MM = 2.0
# When the largest body component is not head-like the crop is skipped (`_not_head_like`).
# A whole head is nearly all of the body mask once thin table parts are opened away (the
# synthetic heads: 100 %); a head split in two leaves each half near 50 %.
HEAD_MIN_BODY_SHARE = 0.6
# The head fills about a third to a half of a head CT's voxels (a 180 mm head in a 230-250 mm
# field of view); under 5 % the component is a fragment, not the framed head.
HEAD_MIN_FOV_SHARE = 0.05
# Scanners centre the head in-plane: the component's centre (mid-point of its extent along x and
# along y) lies within this share of the field of view from the middle: in the middle 70 %,
# as an off-centre head still is, not in the outer 15 % on either side.
HEAD_MAX_CENTRE_OFFSET = 0.35
# An axis shrunk by more than this factor is area-averaged rather than interpolated: linear
# interpolation reads only the two nearest input voxels, so beyond about 1.5x it starts to skip
# input and alias (at 5x, four slices in five barely count).
AREA_ZOOM = 1.5
# Label shares are rounded to this many decimals before they are ranked: float32 sums of equal
# shares may differ in their last bits.
_SHARE_DECIMALS = 4


@dataclass
class PreprocessInfo:
    """What `preprocess_case` did to one scan, enough to map results back onto its grid."""

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    # nibabel orientation (array axis -> (RAS axis, flip)) that took the input to RAS order.
    orientation: np.ndarray
    # [start, stop) per axis of the crop in the reoriented (RAS-order) native grid.
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(int(b - a) for a, b in zip(self.crop_start, self.crop_stop, strict=True))

    @property
    def reoriented_shape(self) -> tuple[int, int, int]:
        """Shape of the native scan once reoriented to RAS axis order (before the crop)."""
        return tuple(int(self.native_shape[int(axis)]) for axis in
                     np.argsort(self.orientation[:, 0]))

    @property
    def reoriented_affine(self) -> np.ndarray:
        return self.native_affine @ nio.inv_ornt_aff(self.orientation, self.native_shape)

    @property
    def network_affine(self) -> np.ndarray:
        """Affine of the network grid: the crop's box split into `resampled_shape` voxels."""
        zoom = np.array(self.crop_shape, float) / np.array(self.resampled_shape, float)
        scale = np.diag([*zoom, 1.0])
        # With align_corners=False, voxel 0 of the new grid sits (zoom - 1) / 2 native voxels
        # past the crop's first voxel centre.
        scale[:3, 3] = np.array(self.crop_start, float) + (zoom - 1.0) / 2.0
        return self.reoriented_affine @ scale

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size of the network grid in mm (close to `data.spacing`, exact for the box)."""
        return tuple(float(s) for s in np.linalg.norm(self.network_affine[:3, :3], axis=0))


def window_channels(hu: np.ndarray, windows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack one [0, 1] channel per window [level, width]: level - width/2 -> 0, + width/2 -> 1."""
    hu = np.asarray(hu, dtype=np.float32)
    out = np.empty((len(windows), *hu.shape), dtype=np.float32)
    for channel, (level, width) in zip(out, windows, strict=True):
        np.subtract(hu, np.float32(level - width / 2.0), out=channel)
        np.multiply(channel, np.float32(1.0 / width), out=channel)
        np.clip(channel, 0.0, 1.0, out=channel)
    return out


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(array in the closest RAS axis order, the nibabel orientation that was applied)."""
    orientation = nio.io_orientation(affine)
    return nio.apply_orientation(array, orientation), orientation


def head_box(hu: np.ndarray, spacing: Sequence[float], source: object = "the scan",
             ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """[start, stop) of the head's bounding box plus a margin; the whole scan if no head is found.

    The body mask (HU > -500) is computed on an in-plane subsampled grid, opened to cut thin
    connections to the table, and reduced to its largest connected component. When that
    component does not look like a head (`_not_head_like`), cropping to it could cut the head
    away: `source` (the file) is named in a warning and the whole scan is kept.
    """
    steps = [max(1, int(HEAD_MASK_SPACING_MM // s)) for s in spacing[:2]] + [1]
    coarse = _open_in_plane(hu[::steps[0], ::steps[1], ::steps[2]] > HEAD_THRESHOLD_HU)
    components, count = ndimage.label(coarse)
    whole = (0, 0, 0), tuple(int(n) for n in hu.shape)
    if count == 0:
        return whole
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    box = ndimage.find_objects(components)[int(sizes.argmax()) - 1]
    reason = _not_head_like(sizes, box, coarse.shape)
    if reason:
        warnings.warn(f"crop to head: {source}: {reason}; keeping the whole scan uncropped",
                      UserWarning, stacklevel=2)
        return whole
    start, stop = [], []
    for axis, sl in enumerate(box):
        margin = int(np.ceil(HEAD_MARGIN_MM / spacing[axis]))
        start.append(max(0, sl.start * steps[axis] - margin))
        stop.append(min(hu.shape[axis], (sl.stop - 1) * steps[axis] + 1 + margin))
    return tuple(start), tuple(stop)


def _not_head_like(sizes: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> str:
    """Why the kept body component is not a head (one clause), or "" when it is.

    A head scan is framed on the head: the head is most of what is denser than air, fills a fair
    part of the field of view and lies near its centre in-plane. A component failing any of the
    HEAD_* thresholds is more likely a half of a split head, or a large foreign object (a
    phantom, a bolus bag, the shoulders) beside a smaller head.
    """
    share = float(sizes.max()) / float(sizes.sum())
    if share < HEAD_MIN_BODY_SHARE:
        return (f"the largest connected body part holds only {share:.0%} of the body voxels "
                f"(a head is at least {HEAD_MIN_BODY_SHARE:.0%}), as if the head were split")
    fov_share = float(sizes.max()) / float(np.prod(shape))
    if fov_share < HEAD_MIN_FOV_SHARE:
        return (f"the largest connected body part fills only {fov_share:.1%} of the field of "
                f"view (a head fills at least {HEAD_MIN_FOV_SHARE:.0%})")
    # The middle of the component's bounding box along x and y, as a share of the field of view.
    offset = np.array([abs((sl.start + sl.stop) / 2.0 / n - 0.5)
                       for sl, n in zip(box[:2], shape[:2], strict=True)])
    if offset.max() > HEAD_MAX_CENTRE_OFFSET:
        return (f"the largest connected body part lies {offset.max():.0%} of the field of view "
                f"off its centre (a head is within {HEAD_MAX_CENTRE_OFFSET:.0%})")
    return ""


def _open_in_plane(mask: np.ndarray) -> np.ndarray:
    """Binary opening by a 3 x 3 x 1 square (outside the array counts as empty).

    Written as shifted ANDs and ORs along x then y: the same result as
    `ndimage.binary_opening(mask, np.ones((3, 3, 1)))` at a tenth of its time.
    """
    def sweep(array: np.ndarray, axis: int, erode: bool) -> np.ndarray:
        out = array.copy()
        a = np.moveaxis(array, axis, 0)
        o = np.moveaxis(out, axis, 0)
        if erode:
            o[1:] &= a[:-1]
            o[:-1] &= a[1:]
            o[0] = o[-1] = False
        else:
            o[1:] |= a[:-1]
            o[:-1] |= a[1:]
        return out

    eroded = sweep(sweep(mask, 0, erode=True), 1, erode=True)
    return sweep(sweep(eroded, 0, erode=False), 1, erode=False)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target: Sequence[float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target,
                                                                   strict=True))


def resample(array: np.ndarray, shape: Sequence[int], order: int,
             antialias: bool = False) -> np.ndarray:
    """Resample the last three axes of `array` to `shape`: order 1 linear, 0 nearest.

    With `antialias` (images going to the network grid), an axis shrunk by more than
    `AREA_ZOOM` is area-averaged instead (see the module's doc). Leading axes (channels) are
    kept. Linear output is float32; nearest keeps the dtype.
    """
    shape = tuple(int(n) for n in shape)
    if tuple(array.shape[-3:]) == shape:
        return array if order == 0 else array.astype(np.float32, copy=False)
    if order == 0:
        # Nearest as torch's `nearest-exact` (voxel centres as in the linear mode), done as a
        # gather so that every dtype works (torch's kernel takes only uint8 and floats).
        picks = [np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.intp), n - 1)
                 for n, m in zip(array.shape[-3:], shape, strict=True)]
        return array[(..., *np.ix_(*picks))]
    if order != 1:
        raise ValueError(f"resampling order must be 0 or 1, got {order}")
    lead = array.shape[:-3]
    if not lead and array.strides[0] < array.strides[2]:
        # A NIfTI reads in Fortran order (x fastest): interpolating its transpose, which is
        # C-ordered, skips a 40 ms reordering copy of a 512 x 512 x 32 scan. Linear
        # interpolation treats each axis alike, so the result is the same.
        return resample(array.T, shape[::-1], order=1, antialias=antialias).T
    if antialias and (shrunk := area_axes(array.shape[-3:], shape)):
        for axis in shrunk:
            array = _area_average(array, len(lead) + axis, shape[axis])
        return resample(array, shape, order=1)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    out = F.interpolate(tensor.reshape(1, -1, *array.shape[-3:]), size=shape, mode="trilinear",
                        align_corners=False)
    return out.reshape(*lead, *shape).numpy()


def area_axes(shape: Sequence[int], target: Sequence[int]) -> list[int]:
    """The axes that resampling `shape` to `target` shrinks by more than `AREA_ZOOM`, in the
    order to average them: the most shrunk first, so that later passes work on less data, but
    the last axis last, whose gather is element by element rather than whole rows."""
    zooms = [n / m for n, m in zip(shape, target, strict=True)]
    last = len(zooms) - 1
    return sorted((axis for axis, zoom in enumerate(zooms) if zoom > AREA_ZOOM),
                  key=lambda axis: (axis == last, -zooms[axis]))


def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, both (n_out, taps), of area averaging n_in voxels into n_out:
    output voxel j covers the input's [j, j + 1) * n_in / n_out (in voxel edges, as the linear
    mode's `align_corners=False` places it), and each input voxel weighs the share of that
    footprint it covers."""
    zoom = n_in / n_out
    start = np.arange(n_out) * zoom
    stop = start + zoom
    index = np.floor(start).astype(np.intp)[:, None] + np.arange(int(np.ceil(zoom)) + 1)
    covered = np.minimum(stop[:, None], index + 1) - np.maximum(start[:, None], index)
    weight = (np.clip(covered, 0.0, None) / zoom).astype(np.float32)
    return np.minimum(index, n_in - 1), weight


def _area_average(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """`array` (any dtype) area-averaged along `axis` to n_out voxels, as float32."""
    index, weight = _area_taps(array.shape[axis], n_out)
    shape = [1] * array.ndim
    shape[axis] = n_out
    out = None
    for tap in range(index.shape[1]):
        if not weight[:, tap].any():
            continue
        term = np.take(array, index[:, tap], axis=axis).astype(np.float32, copy=False)
        term *= weight[:, tap].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample a label map (X, Y, Z) to `shape`, keeping the labelled volume.

    Along the axes `area_axes` picks, the labelled share of every output voxel (any non-zero
    code) is area-averaged, and the voxels whose share reaches the level that keeps the volume
    are labelled: as many as the sum of the shares, to the nearest voxel (equal shares all in or
    all out, so the result is a level set, not a speckle). Each takes the code with the largest
    share there (ties: the lower code). Along the other axes, nearest neighbour. A plain majority (share > 0.5) would shave every convex lesion
    (3-4 % of its volume for 5x thicker slices); sampling one slice in five gains or loses whole
    slices.
    """
    shape = tuple(int(n) for n in shape)
    shrunk = area_axes(labels.shape, shape)
    if not shrunk:
        return resample(labels, shape, order=0)
    if labels.strides[0] < labels.strides[2]:
        return resample_labels(labels.T, shape[::-1]).T  # Fortran order: as `resample` does
    # Nearest neighbour first along the other axes, so only the shrunk ones keep their size.
    picked = resample(labels, [labels.shape[a] if a in shrunk else shape[a] for a in range(3)],
                      order=0)
    codes = np.flatnonzero(np.bincount(picked.ravel()))[1:]

    def share_of(mask: np.ndarray) -> np.ndarray:
        for axis in shrunk:
            mask = _area_average(mask, axis, shape[axis])
        return np.round(mask, _SHARE_DECIMALS)

    out = np.zeros(shape, dtype=labels.dtype)
    if codes.size == 0:
        return out
    labelled = share_of(picked > 0)
    labelled = labelled >= _volume_keeping_level(labelled)
    if codes.size == 1:
        out[labelled] = codes[0]
        return out
    best = np.full(shape, -1.0, dtype=np.float32)
    for code in codes:
        share = share_of(picked == code)
        wins = labelled & (share > best)
        out[wins] = code
        np.maximum(best, share, out=best)
    return out


def _volume_keeping_level(share: np.ndarray) -> float:
    """The lowest share a voxel needs so that the voxels at or above it number the closest to
    the sum of all shares (the class's volume in voxels)."""
    volume = float(share.sum(dtype=np.float64))
    ranked = np.sort(share[share > 0])[::-1]
    if ranked.size == 0 or volume < 0.5:
        return np.inf
    level = ranked[min(int(volume + 0.5), ranked.size) - 1]
    at_or_above = int(np.count_nonzero(ranked >= level))
    above = int(np.count_nonzero(ranked > level))
    if abs(above - volume) < abs(at_or_above - volume):
        return float(np.nextafter(level, np.float32(np.inf)))
    return float(level)


def training_labels(codes: np.ndarray, subtypes: bool) -> np.ndarray:
    """Contract codes -> training targets: any hemorrhage = 1, or the five subtypes as they are."""
    return codes if subtypes else (codes > 0).astype(np.uint8)


def label_codes(label: Volume, label_mapping: LabelMapping | None,
                subtypes: bool) -> np.ndarray:
    """A label file's values -> contract codes, through the layout's mapping (default: the
    contract's codes 0-5 as they are)."""
    mapping = label_mapping or LABEL_MAPPINGS["generic"]
    values = label.array
    # The readers give uint8, whose distinct values bincount finds far faster than unique.
    present = (np.flatnonzero(np.bincount(values.ravel())) if values.dtype == np.uint8
               else np.unique(values))
    invalid = mapping.invalid_values(present)
    if invalid:
        raise UsageError(f"label {label.path} holds values {invalid[:5]} outside "
                         f"{mapping.description}")
    if subtypes and mapping.binary:
        raise UsageError(f"setting data.subtypes needs subtype labels, but label {label.path} "
                         f"marks only any hemorrhage")
    return mapping.to_codes(label.array)


def prepare_hu(image: Volume, label: Volume | None, data_cfg: DataConfig,
               label_mapping: LabelMapping | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, PreprocessInfo]:
    """Reorient, crop and resample a scan: (HU float32 (X, Y, Z), training labels | None, info).

    This is `preprocess_case` before the windows; the cache stores its output compactly.
    """
    hu = np.asarray(image.array, dtype=np.float32)
    if hu.ndim != 3:
        raise UsageError(f"image {image.path} must be a 3D scan, got shape {hu.shape}")
    codes = None
    if label is not None:
        if tuple(label.array.shape) != hu.shape:
            raise UsageError(f"label {label.path} has shape {tuple(label.array.shape)}, "
                             f"but its image {image.path} has {hu.shape}")
        codes = label_codes(label, label_mapping, data_cfg.subtypes)
    hu_ras, orientation = reorient_to_ras(hu, image.affine)
    native_shape = tuple(int(n) for n in hu.shape)
    spacing = np.linalg.norm(
        (image.affine @ nio.inv_ornt_aff(orientation, native_shape))[:3, :3], axis=0)
    if data_cfg.crop_to_head:
        start, stop = head_box(hu_ras, spacing, image.path)
    else:
        start, stop = (0, 0, 0), tuple(int(n) for n in hu_ras.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    cropped = hu_ras[box]
    new_shape = resampled_shape(cropped.shape, spacing, data_cfg.spacing)
    out_hu = resample(cropped, new_shape, order=1, antialias=True)
    info = PreprocessInfo(native_shape=native_shape,
                          native_affine=np.asarray(image.affine, float),
                          orientation=orientation, crop_start=tuple(start),
                          crop_stop=tuple(stop), resampled_shape=new_shape)
    out_label = None
    if codes is not None:
        out_label = labels_to_network(training_labels(codes, data_cfg.subtypes), info)
    return out_hu, out_label, info


def labels_to_network(labels: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """A label map (or uint8 mask) on the native grid -> the network grid, as `prepare_hu`
    takes the scan there: reoriented, cropped, resampled keeping its volume (`resample_labels`)."""
    return resample_labels(nio.apply_orientation(labels, info.orientation)[_crop_box(info)],
                           info.resampled_shape)


def preprocess_case(image: Volume, label: Volume | None, data_cfg: DataConfig,
                    label_mapping: LabelMapping | None = None,
                    ) -> tuple[np.ndarray, np.ndarray | None, PreprocessInfo]:
    """A scan -> (channels float32 (C, X, Y, Z), training labels uint8 | None, PreprocessInfo)."""
    hu, labels, info = prepare_hu(image, label, data_cfg, label_mapping)
    return window_channels(hu, data_cfg.windows), labels, info


def _native_canvas(lead: tuple[int, ...], info: PreprocessInfo, dtype: np.dtype,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(zeros of shape (*lead, *native_shape), a view of it in the RAS axis order of the network
    grid): what is written through the view lands in the input's own voxel order, uncopied."""
    # In NIfTI's voxel order (x fastest): such an array is written to disk without a
    # transposing copy (a 512 x 512 x 32 label map in 16 ms instead of 51 ms).
    spatial = len(lead) + np.arange(3)
    native = np.zeros((*lead, *info.native_shape[::-1]), dtype=dtype).transpose(
        *range(len(lead)), *spatial[::-1])
    # apply_orientation flips and transposes the leading axes, as views: move the class axes
    # out of the way first.
    classes_last = np.moveaxis(native, tuple(range(len(lead))), tuple(range(-len(lead), 0)))
    ras = nio.apply_orientation(classes_last, info.orientation)
    return native, np.moveaxis(ras, tuple(range(-len(lead), 0)), tuple(range(len(lead))))


def _crop_box(info: PreprocessInfo) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(info.crop_start, info.crop_stop, strict=True))


def restore_to_native(array: np.ndarray, info: PreprocessInfo, order: int | None = None,
                      ) -> np.ndarray:
    """Map a network-grid array back onto the input scan's exact voxel grid.

    `array` is (K, x, y, z) class probabilities (linear interpolation; outside the crop the
    background, class 0, has probability 1) or (x, y, z) labels (nearest; 0 outside the crop).
    `order` defaults to 1 for probabilities and 0 for labels.
    """
    if order is None:
        order = 1 if array.ndim == 4 else 0
    if tuple(array.shape[-3:]) != tuple(info.resampled_shape):
        raise ValueError(f"array of spatial shape {array.shape[-3:]} does not match the "
                         f"network grid {info.resampled_shape}")
    cropped = resample(array, info.crop_shape, order=order)
    native, ras = _native_canvas(array.shape[:-3], info, cropped.dtype)
    if array.ndim == 4:
        native[0] = 1.0
    ras[(..., *_crop_box(info))] = cropped
    return native


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the high one's weight for each output voxel of a linear
    resampling from n_in to n_out voxels, placed as torch's `align_corners=False` does."""
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = source.astype(np.intp)
    return low, np.minimum(low + 1, n_in - 1), (source - low).astype(np.float32)


def restore_argmax(probabilities: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """The label map (uint8, the input's voxel grid) of class probabilities (K, x, y, z) on the
    network grid: the argmax of `restore_to_native(probabilities, info)`, without restoring it.

    What is interpolated is each class's lead over background, p_k - p_0 (linear in the
    probabilities, so interpolating it is interpolating them; two classes need one channel).
    An interpolated voxel is a weighted mean of its 8 network neighbours, so where no class
    leads at any of them none leads there either: only the box around the network voxels where
    some class leads is interpolated; everything else, and everything outside the crop, is
    background. A typical bleed's box is a few percent of a scan.
    """
    if tuple(probabilities.shape[1:]) != tuple(info.resampled_shape):
        raise ValueError(f"array of spatial shape {probabilities.shape[1:]} does not match the "
                         f"network grid {info.resampled_shape}")
    native, ras = _native_canvas((), info, np.uint8)
    leads = probabilities[1:] - probabilities[:1]
    marked = bounding_box(leads.max(axis=0))
    if marked is None:
        return native
    box, taps = [], []
    for axis, (n_in, n_out) in enumerate(zip(info.resampled_shape, info.crop_shape, strict=True)):
        low, high, weight = _linear_taps(n_in, n_out)
        # Output voxels whose low neighbour is a marked voxel or the one before it.
        first, last = marked[axis].start - 1, marked[axis].stop - 1
        chosen = np.flatnonzero((low >= first) & (low <= last))
        start, stop = int(chosen[0]), int(chosen[-1]) + 1
        box.append(slice(info.crop_start[axis] + start, info.crop_start[axis] + stop))
        taps.append((low[start:stop], high[start:stop], weight[start:stop]))
    # Worked as (class, z, y, x), so that the labels come out x fastest like the canvas.
    interpolated = np.ascontiguousarray(leads.transpose(0, 3, 2, 1), dtype=np.float32)
    for axis, (low, high, weight) in enumerate(taps):
        if not weight.any() and np.array_equal(low, np.arange(info.resampled_shape[axis])):
            continue  # an axis kept at its size (the slices, usually): nothing to interpolate
        where = 3 - axis
        shape = [1, 1, 1, 1]
        shape[where] = -1
        weight = weight.reshape(shape)
        low_values = np.take(interpolated, low, where)
        interpolated = low_values + weight * (np.take(interpolated, high, where) - low_values)
    # The argmax, with its ties: background (lead 0) and then the lower code win them.
    labels = np.zeros(interpolated.shape[1:], dtype=np.uint8)
    best = np.zeros(interpolated.shape[1:], dtype=np.float32)
    for code, lead in enumerate(interpolated, start=1):
        wins = lead > best
        labels[wins] = code
        np.maximum(best, lead, out=best)
    ras[tuple(box)] = labels.T
    return native
