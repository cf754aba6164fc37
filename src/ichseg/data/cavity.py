"""The cranial cavity of a head CT: the space the skull encloses, where intracranial hemorrhage
can lie, found from the HU alone.

The skull is bone above `BONE_HU`. It is found on a coarse grid (about `COARSE_MM` voxels, a
coarse voxel is bone when any of its voxels is), where the bone is closed by `CLOSING_MM` in 3D
(sutures, thin temporal squama lost to partial volume, small foramina, streaks) and the holes of
each axial slice's bone are filled: above the skull base the skull is a ring, and what it
encloses is the cavity. Then, slice by slice out from the slice enclosing the most:
- above the skull base, a slice whose ring is open (a craniectomy, a burr-hole flap, a scan whose
  field of view cuts the skull) takes the convex hull of its bone instead, when the hull encloses
  more than twice what filling does;
- below the lowest slice whose ring encloses `RING_SHARE` of the most enclosed, the cavity goes
  on down only while its part in the slice, overlapping the part above, encloses at least
  `FLOOR_SHARE` of the most: the posterior fossa narrows to the foramen magnum (about a twentieth
  of the largest slice's area) and the spinal canal, which the vertebral rings also enclose, is
  never reached; parts that are mostly air (paranasal sinuses, mastoid cells) are left out.
Back on the scan's own grid the coarse cavity is grown by one coarse voxel into what is not bone,
through what is connected to it there, so the cavity reaches the inner table exactly: epidural and
subdural blood against it stays inside, while the scalp beyond the bone stays out.

Limits: brain herniating through a craniectomy beyond the chord of the remaining bone is cut;
the lowest millimetres of the posterior fossa just above the foramen magnum may be cut; HU
clipped to a brain window (8-bit exports) show no bone, and then no cavity is found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ichseg.data.ct import reorient_to_ras

# Cortical and even thin diploic bone is several hundred HU; blood, calcified falx and contrast
# in vessels rarely reach it (a dense calcification inside the cavity is filled back in).
BONE_HU = 300.0
# In-plane (and thin-slice) size of the coarse grid: a 512 x 512 scan becomes about 100 x 100.
COARSE_MM = 2.5
# A voxel of the inner table's edge below this is partly bone, partly what lies against it
# (blood of an epidural haematoma included): its centre may lie inside the cavity.
RIM_HU = 1000.0
# Radius of the 3D closing of the bone: bridges gaps up to about twice this.
CLOSING_MM = 5.0
# A slice is a ring slice (above the skull base) when it encloses this share of the largest.
RING_SHARE = 0.4
# Below the ring slices the cavity stops at the first slice enclosing less than this share of
# the largest: the foramen magnum (about 8 cm^2 in an adult) is about 0.05, the lowest
# posterior fossa above it more.
FLOOR_SHARE = 0.08
# A slice whose bone's convex hull encloses more than this many times what filling encloses has
# an open ring (bone missing) and takes the hull.
OPEN_RING_RATIO = 2.0
# A part of a skull-base slice whose mean HU is below this is an air space, not cavity.
AIR_HU = -300.0
# No skull: no slice encloses this much (cm^2; an infant's skull encloses about 100 at its widest),
# or the cavity holds less than this many mL.
MIN_RING_AREA_CM2 = 20.0
MIN_CAVITY_ML = 50.0
# In-plane 8-connectivity per slice, nothing across slices: fills and labels each slice alone.
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[:, :, 1] = True


@dataclass(frozen=True)
class Cavity:
    """The cranial cavity of one scan: `mask` (bool, the scan's voxel grid, True inside) or None
    with `reason`, why no skull was found (for a warning naming the file)."""

    mask: np.ndarray | None
    reason: str | None = None

    def volume_ml(self, affine: np.ndarray) -> float:
        """The cavity's volume in mL (0 when none was found)."""
        if self.mask is None:
            return 0.0
        voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
        return float(np.count_nonzero(self.mask)) * voxel_ml


def find_cavity(hu: np.ndarray, affine: np.ndarray) -> Cavity:
    """The cranial cavity of a head CT `hu` (X, Y, Z) in HU with its RAS `affine` (see the
    module's doc for how); `Cavity(None, reason)` when no skull encloses a cavity."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        return Cavity(None, f"the scan is not 3D (shape {hu.shape})")
    hu_ras, orientation = reorient_to_ras(hu, affine)
    spacing = np.linalg.norm(
        (np.asarray(affine, float) @ nio.inv_ornt_aff(orientation, hu.shape))[:3, :3], axis=0)
    bone = hu_ras > BONE_HU
    if not bone.any():
        return Cavity(None, f"no voxel is above {BONE_HU:.0f} HU (bone): no skull in the scan, "
                            f"or its HU are clipped to a window (highest {float(hu.max()):.0f} HU)")
    block = tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)
    coarse_spacing = np.asarray(spacing) * block
    bone_coarse = _block_any(bone, block)
    coarse, reason = _coarse_cavity(bone_coarse, _block_mean(hu_ras, block), coarse_spacing)
    if coarse is None:
        return Cavity(None, reason)
    mask = _refine(coarse, hu_ras, bone, block)
    volume = float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
    if volume < MIN_CAVITY_ML:
        return Cavity(None, f"the skull encloses only {volume:.0f} mL (a cranial cavity holds "
                            f"at least {MIN_CAVITY_ML:.0f})")
    back = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), orientation)
    return Cavity(np.ascontiguousarray(nio.apply_orientation(mask, back)))


def _padded_blocks(array: np.ndarray, block: Sequence[int], fill) -> np.ndarray:
    """`array` padded to whole blocks and reshaped to (X', bx, Y', by, Z', bz)."""
    pad = [(0, -n % b) for n, b in zip(array.shape, block, strict=True)]
    if any(p for _, p in pad):
        array = np.pad(array, pad, constant_values=fill)
    nx, ny, nz = (n // b for n, b in zip(array.shape, block, strict=True))
    return array.reshape(nx, block[0], ny, block[1], nz, block[2])


def _block_any(mask: np.ndarray, block: Sequence[int]) -> np.ndarray:
    return _padded_blocks(mask, block, False).any(axis=(1, 3, 5))


def _block_mean(hu: np.ndarray, block: Sequence[int]) -> np.ndarray:
    # Air pads the edge blocks: only air spaces are told by the mean, and the edge is outside.
    return _padded_blocks(np.asarray(hu, np.float32), block, -1000.0).mean(axis=(1, 3, 5))


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    half = [int(radius_mm // s) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True)) <= 1.0


def _coarse_cavity(bone: np.ndarray, hu_mean: np.ndarray, spacing: np.ndarray,
                   ) -> tuple[np.ndarray | None, str | None]:
    """(the cavity on the coarse grid, None) or (None, why none was found)."""
    ball = _ball(CLOSING_MM, spacing)
    pad = [(h, h) for h in (n // 2 for n in ball.shape)]
    # Padded so that bone at the scan's edge is not eroded away by the closing.
    shell = ndimage.binary_closing(np.pad(bone, pad), ball)
    shell = shell[tuple(slice(p, p + n) for (p, _), n in zip(pad, bone.shape, strict=True))]
    shell |= bone
    enclosed = ndimage.binary_fill_holes(shell, _IN_PLANE) & ~shell
    pixel_cm2 = float(spacing[0] * spacing[1]) / 100.0
    areas = enclosed.sum(axis=(0, 1)) * pixel_cm2
    largest = float(areas.max())
    if largest < MIN_RING_AREA_CM2:
        return None, (f"no ring of bone encloses more than {largest:.0f} cm^2 in any slice "
                      f"(a skull encloses at least {MIN_RING_AREA_CM2:.0f})")
    widest = int(areas.argmax())
    lowest_ring = int(np.flatnonzero(areas >= RING_SHARE * largest).min())
    cavity = np.zeros_like(enclosed)
    cavity[..., widest] = _largest_part(enclosed[..., widest])
    for z in range(widest + 1, bone.shape[2]):  # up to the vertex
        part = _open_ring(shell[..., z], enclosed[..., z])
        cavity[..., z] = _overlapping(part, cavity[..., z - 1], hu_mean[..., z])
        if not cavity[..., z].any():
            break
    for z in range(widest - 1, -1, -1):  # down to the skull base
        if z >= lowest_ring:
            part = _open_ring(shell[..., z], enclosed[..., z])
            cavity[..., z] = _overlapping(part, cavity[..., z + 1], hu_mean[..., z])
        else:
            kept = _overlapping(enclosed[..., z], cavity[..., z + 1], hu_mean[..., z])
            if kept.sum() * pixel_cm2 < FLOOR_SHARE * largest:
                break  # the foramen magnum, or beneath the skull base
            cavity[..., z] = kept
    # Dense spots inside (calcifications, bone fragments, metal) are cavity too.
    return ndimage.binary_fill_holes(cavity, _IN_PLANE), None


def _largest_part(mask: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return parts == sizes.argmax()


def _open_ring(shell: np.ndarray, enclosed: np.ndarray) -> np.ndarray:
    """What a slice's bone encloses: the holes of its ring, or where that ring is open (bone
    missing), the convex hull of its bone less the bone."""
    points = np.argwhere(shell)
    if len(points) < 3:
        return enclosed
    try:
        hull = ConvexHull(points)
    except QhullError:  # all bone on a line
        return enclosed
    grid = np.indices(shell.shape).reshape(2, -1).T
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(axis=1)
    hull_interior = inside.reshape(shell.shape) & ~shell
    if hull_interior.sum() > OPEN_RING_RATIO * enclosed.sum():
        return hull_interior
    return enclosed


def _overlapping(part: np.ndarray, neighbour: np.ndarray, hu_mean: np.ndarray) -> np.ndarray:
    """The connected parts of a slice's `part` that overlap the cavity in the adjacent slice
    `neighbour` and are not air spaces."""
    parts, count = ndimage.label(part)
    if count == 0:
        return part
    touching = np.unique(parts[neighbour & part])
    touching = touching[touching > 0]
    if touching.size == 0:
        return np.zeros_like(part)
    sums = ndimage.sum_labels(hu_mean, parts, touching)
    sizes = ndimage.sum_labels(np.ones_like(hu_mean), parts, touching)
    keep = touching[sums / sizes >= AIR_HU]
    return np.isin(parts, keep)


def _refine(coarse: np.ndarray, hu: np.ndarray, bone: np.ndarray, block: Sequence[int],
            ) -> np.ndarray:
    """The coarse cavity on the full grid, grown by one coarse voxel into what is not bone: a
    coarse voxel holding any bone is not cavity, so the coarse cavity stops up to one coarse
    voxel short of the inner table. Of what is not bone within that reach, the parts connected
    to the coarse cavity and the pockets closed in by bone are kept; a part reaching past it
    (scalp beyond a thin bone) is not. Then the partial-volume rim: one voxel more into the
    inner table, where the voxel is not solid bone."""
    reach = np.ones((3, 3, 3 if block[2] > 1 else 1), bool)
    grown = ndimage.binary_dilation(coarse, reach)
    box = ndimage.find_objects(grown.astype(np.uint8))[0]
    full_box = tuple(slice(s.start * b, min(s.stop * b, n))
                     for s, b, n in zip(box, block, bone.shape, strict=True))

    def upsample(mask: np.ndarray) -> np.ndarray:
        out = mask[box]
        for axis, b in enumerate(block):
            out = out.repeat(b, axis=axis)
        return out[tuple(slice(0, s.stop - s.start) for s in full_box)]

    seed = upsample(coarse)
    within = upsample(grown)
    candidate = within & ~bone[full_box]
    parts, _ = ndimage.label(candidate)
    beyond = np.unique(parts[ndimage.binary_dilation(~within) & candidate])
    kept = np.setdiff1d(np.unique(parts[candidate]), beyond)
    kept = np.union1d(kept, np.unique(parts[seed]))
    inside = np.isin(parts, kept[kept > 0]) | seed
    rim = ndimage.binary_dilation(inside) & bone[full_box] & (hu[full_box] < RIM_HU)
    mask = np.zeros(bone.shape, bool)
    mask[full_box] = inside | rim
    return mask
