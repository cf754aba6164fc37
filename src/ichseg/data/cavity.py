"""The cranial cavity of a head CT: the space the skull encloses, where intracranial hemorrhage
can lie, found from the HU alone.

The skull is bone above `BONE_HU`. It is found on a coarse grid (about `COARSE_MM` voxels, a
coarse voxel is bone when any of its voxels is), where the bone is closed by `CLOSING_MM` in 3D
(sutures, thin temporal squama lost to partial volume, small foramina, streaks) and the holes of
each axial slice's bone are filled: above the skull base the skull is a ring, and what it
encloses is the cavity. Then, slice by slice out from the slice enclosing the most:
- above the skull base, a slice whose ring is open (a craniectomy, a burr-hole flap, a scan whose
  field of view cuts the skull), where the convex hull of its bone encloses more than twice what
  filling does, takes that hull and what lies next to it deeper than SCALP_MM under the skin;
- below the lowest slice whose ring encloses `RING_SHARE` of the most enclosed (the skull base),
  each slice is also closed in-plane by `BASE_CLOSING_MM` (mastoid air cells open the ring
  there) and keeps what lies within `FOOTPRINT_MARGIN_MM` of the cavity above; the cavity goes
  on down only while that encloses at least `FLOOR_SHARE` of the most (a slice left open is
  bridged when one within `GAP_MM` below encloses enough): the posterior fossa narrows to the
  foramen magnum (about a twentieth of the largest slice's area) and the spinal canal, which the
  vertebral rings also enclose, is never reached;
- in every slice, parts that are mostly fat or air (orbits, paranasal sinuses, mastoid cells)
  are left out.
Back on the scan's own grid the coarse cavity is grown by one coarse voxel into what is not bone,
through what is connected to it there, so the cavity reaches the inner table exactly, and then
`RIM_MM` into the inner table's partial-volume voxels (`MIXED_HU` to `RIM_HU`; on grids finer
than `CREVICE_SPACING_MM` along every axis two voxels deep in 3D, for blood in a sub-voxel crevice
of the skull base): epidural and subdural blood against it stays inside, while the scalp beyond
the bone stays out. Air (`BODY_HU` or below) is never cavity: the growth stops at a paranasal
sinus or mastoid cell whose thin wall partial volume has hidden.

A brain-window export (8-bit images of a window such as [0, 80] HU turned back into HU) has no
bone above BONE_HU: the skull sits at the window's top, with blood denser than it. When the
highest value is below BONE_HU and `WINDOW_SATURATED_SHARE` of the head sits at it, the
saturated parts of at least `SATURATED_BONE_ML` are the bone, the window's bottom is fat and
air, and the same steps run, the rim reaching `WINDOW_RIM_MM` into the saturated band.

Limits: under a craniectomy the cavity reaches to SCALP_MM under the skin, soft tissue in the
flap's place included; the lowest millimetres of the posterior fossa just above the foramen
magnum may be cut, and narrow recesses beside bony ridges (under about 5 mm); on pixels of 3 mm
or more the orbits' thin roof is lost and their upper part taken; intracranial air
(pneumocephalus) is left out; on a brain-window
export, blood at the window's top against the inner table is fused with the saturated skull
and cut beyond WINDOW_RIM_MM, and a window clipped without a saturated skull finds no cavity.
"""

from __future__ import annotations

import itertools
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
# Coarse voxels, in-plane, by which the coarse cavity is grown back towards the inner table on
# the scan's grid: the coarse voxels that hold some bone. Two would also reopen narrow recesses
# beside bony ridges that the closing sealed, but cross a thin temporal bone whose partial
# volume falls below BONE_HU on 1.4 mm pixels, into the scalp and temporalis.
REFINE_REACH = 1
# A voxel between this and BONE_HU, denser than blood, brain or a calcification, is partly bone:
# blood or CSF in a crevice of the skull base narrower than a voxel, between bony ridges, blurs
# to 130-400 HU, and the rim takes it as it takes the inner table's edge.
MIXED_HU = 100.0
# On a grid this fine along every axis (HU unclipped) the rim's first two voxels go along every
# axis: blood in such a crevice lies up to two voxels into the partly bony band, in any direction
# (on thick slices a second step across slices would take millilitres of bone).
CREVICE_SPACING_MM = 1.5
# How far in-plane the cavity reaches into such partial voxels (the scanner's blur spreads the
# inner table's edge over 1-2 mm; half of it lies on the cavity's side).
RIM_MM = 1.0
# Radius of the 3D closing of the bone: bridges gaps up to about twice this.
CLOSING_MM = 5.0
# Below the ring slices, a slice whose ring does not enclose enough is closed again in-plane
# with this radius: mastoid air cells and thin temporal bone open gaps of 10-15 mm, the
# foramen magnum is 30-35 mm wide.
BASE_CLOSING_MM = 10.0
# Below the ring slices, a slice whose ring stays open even so is bridged from the slices
# above and below when one within this distance encloses enough again.
GAP_MM = 6.0
# A slice is a ring slice (above the skull base) when it encloses this share of the largest.
RING_SHARE = 0.4
# Below the ring slices the cavity stops at the first slice enclosing less than this share of
# the largest: the foramen magnum (about 8 cm^2 in an adult) is about 0.05, the lowest
# posterior fossa above it more.
FLOOR_SHARE = 0.08
# Denser than this is the head (air and the air of a head holder's foam are below it).
BODY_HU = -500.0
# Where the skull is missing (a craniectomy), the cavity reaches this close to the skin: the
# scalp is 4-7 mm thick.
SCALP_MM = 6.0
# A slice whose bone's convex hull encloses more than this many times what filling encloses has
# an open ring (bone missing) and takes the hull.
OPEN_RING_RATIO = 2.0
# A part of a slice whose voxels are mostly below this is fat or air (an orbit, a paranasal
# sinus, mastoid cells), not cavity: CSF, brain and blood are all above 0 HU.
FAT_HU = -50.0
# Below the ring slices, the cavity in a slice lies within this distance (in-plane) of its
# outline in the slice above: the skull base narrows it going down, and what the closed bone
# encloses further out (the jaw joint, the parapharyngeal space) is outside the skull.
FOOTPRINT_MARGIN_MM = 5.0
# No skull: no slice encloses this much (cm^2; an infant's skull encloses about 100 at its widest),
# or the cavity holds less than this many mL.
MIN_RING_AREA_CM2 = 20.0
MIN_CAVITY_ML = 50.0
# HU clipped to a window (a brain-window 8-bit export turned back into HU): the highest value is
# below BONE_HU and at least this share of the head's voxels sit exactly at it. On a [0, 80] HU
# window the bone and its partial-volume edge are a quarter to a third of a head's voxels (the
# real GE scan 33 %, phantoms 24-29 %); with the bone made soft tissue, its edge and blood still
# saturate 1.2 % of them.
WINDOW_SATURATED_SHARE = 0.05
# In such a scan a saturated part at least this large (mL) is bone; smaller ones are blood, a
# calcification or noise at the window's top.
SATURATED_BONE_ML = 2.0
# How far in-plane the cavity's rim reaches into such bone (RIM_MM where HU tell the inner
# table's edge): blood at the window's top against the inner table saturates as the bone does.
# Measured on phantoms clipped to [0, 80] HU, this keeps every bleed of 1 mm slices for 6-9 %
# more volume than the unclipped cavity; 1 mm lost a few percent of some bleeds' voxels.
WINDOW_RIM_MM = 2.0
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
    fat, air = hu_ras < FAT_HU, hu_ras <= BODY_HU
    partial = (hu_ras > MIXED_HU) & (hu_ras < RIM_HU)
    # Air holds no blood: the cavity's growth on the scan's grid stops at a sinus or air cell
    # that thin bone, lost to partial volume, no longer walls off (a 1.8 mm phantom's frontal
    # sinus and a skull-base air cell took 6 voxels of air).
    gas = air
    rim_mm = RIM_MM
    # Voxels deep along every axis the rim reaches: two where a crevice's voxels are resolved.
    rim_depth = 2 if max(spacing) <= CREVICE_SPACING_MM else 1
    if not bone.any():
        window = _clipped_window(hu_ras)
        if window is None:
            return Cavity(None, f"no voxel is above {BONE_HU:.0f} HU (bone): no skull in the "
                                f"scan, or its HU are clipped to a window (highest "
                                f"{float(hu.max()):.0f} HU) without a saturated skull")
        # A brain-window export: bone is the window's top, fat and air its bottom. Blood at
        # the top saturates too, and against the inner table nothing tells it from bone: the
        # rim reaches WINDOW_RIM_MM into the saturated band.
        low, top = window
        bone = _saturated_bone(hu_ras >= top, float(np.prod(spacing)) / 1000.0)
        fat = air = hu_ras <= low
        partial, rim_mm, rim_depth = bone, WINDOW_RIM_MM, 1
        gas = np.zeros_like(bone)  # the window's bottom is CSF as well as fat and air
    block = tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)
    coarse_spacing = np.asarray(spacing) * block
    bone_coarse = _block_sum(bone, block) > 0
    # (The shorter blocks at the scan's far edges, outside any head, count as less air.)
    fat_share = _block_sum(fat, block) / float(np.prod(block))
    body = _block_sum(~air, block) * 2 > np.prod(block)
    coarse, reason = _coarse_cavity(bone_coarse, fat_share, body, coarse_spacing)
    if coarse is None:
        return Cavity(None, reason)
    mask = _refine(coarse, bone, gas, partial, block, spacing, rim_mm, rim_depth)
    volume = float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
    if volume < MIN_CAVITY_ML:
        return Cavity(None, f"the skull encloses only {volume:.0f} mL (a cranial cavity holds "
                            f"at least {MIN_CAVITY_ML:.0f})")
    back = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), orientation)
    return Cavity(np.ascontiguousarray(nio.apply_orientation(mask, back)))


def _clipped_window(hu: np.ndarray) -> tuple[float, float] | None:
    """(the window's bottom, its top) when `hu` looks clipped to a window whose top lies below
    BONE_HU (see WINDOW_SATURATED_SHARE), else None."""
    low, top = float(hu.min()), float(hu.max())
    if top >= BONE_HU or top <= low:
        return None
    head = np.count_nonzero(hu > low)
    saturated = np.count_nonzero(hu >= top)
    return (low, top) if saturated >= WINDOW_SATURATED_SHARE * head else None


def _saturated_bone(saturated: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The saturated voxels of a window-clipped scan that belong to a part of at least
    SATURATED_BONE_ML: the skull, one part of hundreds of mL. Blood near the window's top
    saturates only where its noise lifts it there, in specks that this leaves out, so that the
    cavity's outline is not drawn round them (a speck touching the skull joins it, and the
    cavity's rim reaches it)."""
    parts, count = ndimage.label(saturated)
    if count == 0:
        return saturated
    sizes = np.bincount(parts.ravel()) * voxel_ml
    sizes[0] = 0.0
    return (sizes >= SATURATED_BONE_ML)[parts]


def _block_sum(mask: np.ndarray, block: Sequence[int]) -> np.ndarray:
    """The count of True voxels of `mask` in each block (the last block along an axis may be
    shorter). Summed as strided views, one per position within the block: a multi-axis sum
    over a 6D reshaped view is many times slower on a whole scan."""
    out = np.zeros([-(-n // b) for n, b in zip(mask.shape, block, strict=True)], np.int16)
    for offset in itertools.product(*(range(b) for b in block)):
        part = mask[tuple(slice(o, None, b) for o, b in zip(offset, block, strict=True))]
        out[tuple(slice(0, n) for n in part.shape)] += part
    return out


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    half = [int(radius_mm // s) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True)) <= 1.0


def _coarse_cavity(bone: np.ndarray, fat_share: np.ndarray, body: np.ndarray,
                   spacing: np.ndarray,
                   ) -> tuple[np.ndarray | None, str | None]:
    """(the cavity on the coarse grid, None) or (None, why none was found)."""
    shell = _close(bone, _ball(CLOSING_MM, spacing))
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
    ring_area = RING_SHARE * largest / pixel_cm2
    floor = FLOOR_SHARE * largest / pixel_cm2
    firm_disk = _ball(BASE_CLOSING_MM, spacing[:2])
    margin = _ball(FOOTPRINT_MARGIN_MM, spacing[:2])
    under_scalp = _ball(SCALP_MM, spacing[:2])
    for z in range(widest + 1, bone.shape[2]):  # up to the vertex
        part = _open_ring(shell[..., z], enclosed[..., z], body[..., z], ring_area, under_scalp)
        cavity[..., z] = _overlapping(part, cavity[..., z - 1], fat_share[..., z])
        if not cavity[..., z].any():
            break
    last = widest  # the lowest slice kept so far
    for z in range(widest - 1, -1, -1):  # down to the skull base
        if z >= lowest_ring:
            part = _open_ring(shell[..., z], enclosed[..., z], body[..., z], ring_area,
                              under_scalp)
            cavity[..., z] = _overlapping(part, cavity[..., z + 1], fat_share[..., z])
            last = z
            continue
        # Mastoid air cells and thin temporal bone open gaps in the ring at the skull base:
        # what the bone encloses once closed more firmly in-plane counts too (the plain fill
        # keeps the recesses that this closing seals).
        shut = _close(shell[..., z], firm_disk)
        part = enclosed[..., z] | (ndimage.binary_fill_holes(shut) & ~shut)
        above = cavity[..., last]
        kept = _overlapping(part & ndimage.binary_dilation(above, margin), above,
                            fat_share[..., z])
        if np.count_nonzero(kept) < floor:
            if (last - z) * spacing[2] < GAP_MM:
                continue  # a ring left open even so: the slice below may close again
            break  # the foramen magnum, or beneath the skull base
        for skipped in range(z + 1, last):  # bridged by what both neighbours hold
            cavity[..., skipped] = above & kept & ~shell[..., skipped]
        cavity[..., z] = kept
        last = z
    # Dense spots inside (calcifications, bone fragments, metal) are cavity too.
    return ndimage.binary_fill_holes(cavity, _IN_PLANE), None


def _close(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """`mask` closed by `element`, padded first so that what lies at the scan's edge is not
    eroded away."""
    pad = [(h, h) for h in (n // 2 for n in element.shape)]
    shut = ndimage.binary_closing(np.pad(mask, pad), element)
    return shut[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape, strict=True))] | mask


def _largest_part(mask: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return parts == sizes.argmax()


def _open_ring(shell: np.ndarray, enclosed: np.ndarray, body: np.ndarray, ring_area: float,
               under_scalp: np.ndarray) -> np.ndarray:
    """What a slice's bone encloses: the holes of its ring, or where that ring is open (bone
    missing: its bone's convex hull encloses more than OPEN_RING_RATIO times the holes) the
    convex hull of the bone, less the bone, and what lies `under_scalp` inside the head's
    outline next to it (the brain under a craniectomy reaches beyond the hull's chord). A slice
    enclosing `ring_area` pixels has a closed ring."""
    area = int(np.count_nonzero(enclosed))
    if area >= ring_area:
        return enclosed
    points = np.argwhere(shell)
    if len(points) < 3:
        return enclosed
    try:
        hull = ConvexHull(points)
    except QhullError:  # all bone on a line
        return enclosed
    lo, hi = points.min(axis=0), points.max(axis=0) + 1
    grid = np.indices(hi - lo).reshape(2, -1).T + lo
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(axis=1)
    hull_interior = np.zeros_like(shell)
    hull_interior[lo[0]:hi[0], lo[1]:hi[1]] = inside.reshape(hi - lo)
    hull_interior &= ~shell
    if np.count_nonzero(hull_interior) <= OPEN_RING_RATIO * area:
        return enclosed
    head = ndimage.binary_erosion(ndimage.binary_fill_holes(body), under_scalp) & ~shell
    parts, count = ndimage.label(head)
    meets = np.zeros(count + 1, bool)
    meets[parts[hull_interior]] = True
    meets[0] = False
    return meets[parts] | hull_interior


def _overlapping(part: np.ndarray, neighbour: np.ndarray, fat_share: np.ndarray
                 ) -> np.ndarray:
    """The connected parts of a slice's `part` that overlap the cavity in the adjacent slice
    `neighbour` and are not mostly fat or air."""
    parts, count = ndimage.label(part)
    if count == 0:
        return part
    touching = np.unique(parts[neighbour & part])
    touching = touching[touching > 0]
    if touching.size == 0:
        return np.zeros_like(part)
    fat = ndimage.mean(fat_share, parts, touching)
    keep = np.zeros(count + 1, bool)
    keep[touching[fat < 0.5]] = True
    return keep[parts]


def _refine(coarse: np.ndarray, bone: np.ndarray, air: np.ndarray, partial: np.ndarray,
            block: Sequence[int], spacing: Sequence[float], rim_mm: float, rim_depth: int,
            ) -> np.ndarray:
    """The coarse cavity on the full grid, grown by one coarse voxel into what is not bone and
    is connected to it there: a coarse voxel holding any bone is not cavity, so the coarse
    cavity stops up to one coarse voxel short of the inner table (a part beyond a thin bone,
    the scalp, is not connected); `air` is never taken. Then the rim: `rim_depth` voxels more
    along every axis, and in-plane up to `rim_mm`, into the `partial` (partly bone) voxels."""
    reach = np.ones((2 * REFINE_REACH + 1,) * 2 + (3 if block[2] > 1 else 1,), bool)
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
    air = air[full_box]
    candidate = upsample(grown) & ~bone[full_box] & ~air
    parts, count = ndimage.label(candidate)
    connected = np.zeros(count + 1, bool)
    connected[parts[seed]] = True
    connected[0] = False
    inside = connected[parts] | (seed & ~air)
    # The partial-volume rim: through voxels that are partly bone (the inner table's edge,
    # where an epidural haematoma's outer voxels lie), one voxel along every axis, then on
    # in-plane up to rim_mm.
    partial = partial[full_box]
    mask = inside
    for _ in range(rim_depth):
        mask = mask | (_grow_one(mask, (0, 1, 2)) & partial)
    for _ in range(int(np.ceil(rim_mm / min(spacing[:2]))) - 1):
        mask |= _grow_one(mask, (0, 1)) & partial
    out = np.zeros(bone.shape, bool)
    out[full_box] = mask
    return out


def _grow_one(mask: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """`mask` grown by one voxel along each of `axes`, as shifted ORs: the same as
    `ndimage.binary_dilation` with a cross at a fraction of its time on a whole scan."""
    out = mask.copy()
    for axis in axes:
        a, o = np.moveaxis(mask, axis, 0), np.moveaxis(out, axis, 0)
        o[1:] |= a[:-1]
        o[:-1] |= a[1:]
    return out
