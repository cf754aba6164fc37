"""Synthetic non-contrast head CT with the five hemorrhage subtypes, for tests and demos.

A case is drawn analytically: every voxel centre is mapped into a head frame (x right, y anterior,
z superior, mm, origin at the head's centre) and the anatomy is a set of nested, slightly
irregular ellipsoid shells (scalp, skull, subarachnoid CSF, cortex over white matter), with
sulci cut where a random smooth field crosses zero, lateral and third ventricles, deep grey
nuclei, the falx and choroid-plexus calcifications, and in the lowest slices the skull base
(cranial fossae, petrous ridges, orbits, sinuses). Hemorrhages are drawn in the places and
shapes they take in real scans. Then comes what the scanner adds: partial-volume blur (voxel
footprint plus point-spread function) and spatially correlated noise of a few HU.

All work is NumPy broadcasting on whole arrays, or on a lesion's bounding box, so a
256 x 256 x 32 case takes a fraction of a second. Case `k` of seed `s` is drawn from
`numpy.random.default_rng([s, k])` alone: the same call gives byte-identical arrays, and a
dataset of 10 cases starts with the 5 cases of a dataset of 5.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ichseg.data.io import nifti_files, nifti_stem, write_nifti
from ichseg.data.layouts import CODES
from ichseg.errors import UsageError

# The contract's label codes by name, as nnU-Net's dataset.json lists them.
LABELS = {name: code for code, name in CODES.items()}
EDH, IPH, IVH, SAH, SDH = (LABELS[name] for name in ("EDH", "IPH", "IVH", "SAH", "SDH"))

# Tissue classes of `SyntheticCase.tissues`: the anatomy drawn, before hemorrhage. Where a lesion
# is, the map keeps the tissue the blood replaced, so tests can ask where each subtype lies.
TISSUES = {"air": 0, "scalp": 1, "skull": 2, "grey": 3, "white": 4, "csf": 5, "ventricle": 6,
           "edema": 7, "falx": 8, "calcification": 9, "fat": 10, "eye": 11}
AIR, SCALP, SKULL, GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION, FAT, EYE = range(12)
# Where blood can lie: inside the dura, outside the ventricles (IVH is drawn on its own).
EXTRA_AXIAL_SPACE = (GREY, WHITE, CSF, FALX)

# HU ranges, drawn once per case (before blur and noise). Skull values vary across its thickness
# between diploe and the cortical tables. Blood is drawn per lesion.
HU_RANGES = {
    "air": (-1000.0, -1000.0),
    "scalp_skin": (25.0, 45.0),
    "scalp_fat": (-100.0, -60.0),
    "skull_diploe": (700.0, 950.0),
    "skull_table": (1350.0, 1600.0),
    "grey": (35.0, 42.0),
    "white": (24.0, 30.0),
    "csf": (3.0, 10.0),
    "edema": (12.0, 19.0),
    "falx": (45.0, 65.0),
    "calcification": (120.0, 250.0),
    "fat": (-110.0, -70.0),  # orbital fat
    "eye": (5.0, 15.0),  # vitreous
    "blood": (56.0, 84.0),
}
BLOOD_VARIATION_HU = 5.0  # low-frequency clot heterogeneity on top of a lesion's mean

DEFAULT_SHAPE = (512, 512, 32)
DEFAULT_SPACING = (0.45, 0.45, 5.0)
FIELD_OF_VIEW_MM = 230.0  # in-plane, when only one of shape and spacing is given
SCAN_LENGTH_MM = 160.0  # along z, when only the spacing is given
MIN_FIELD_OF_VIEW_MM = 200.0  # a head is up to ~196 mm front to back
MIN_SHAPE = (24, 24, 2)
LOWER_HEAD_STRETCH = 1.6
SKULL_BASE_TOP = -38.0  # mm below the head's centre: the floor of the anterior cranial fossa
FLOOR_THICKNESS_MM = 4.0
EMPTY_CASE_FRACTION = 0.15
SUBTYPE_WEIGHTS = {EDH: 0.13, IPH: 0.27, IVH: 0.15, SAH: 0.23, SDH: 0.22}

# Scanner point-spread function (Gaussian sigma, mm) and the thick slice's own profile: the
# partial-volume blur is the voxel footprint (a box of one voxel, sigma = width / sqrt(12))
# combined with this PSF.
PSF_SIGMA_MM = (0.35, 0.35, 0.6)
BLUR_TRUNCATE = 3.0  # kernel radius in sigmas
NOISE_SD_HU = (3.0, 6.0)  # standard deviation of the scanner noise, drawn per case


@dataclass
class SyntheticCase:
    """One synthetic scan: arrays in voxel order (X, Y, Z) with a RAS affine."""

    hu: np.ndarray  # int16 HU
    label: np.ndarray  # uint8, LABELS codes
    tissues: np.ndarray  # uint8, TISSUES codes (anatomy under any blood)
    affine: np.ndarray  # 4x4 float64, voxel index -> RAS mm

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation about z (yaw), then x (pitch), then y (roll); angles in radians."""
    cz, sz = math.cos(yaw), math.sin(yaw)
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(roll), math.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _outline_factor(u_x, u_y):
    """Scales the ellipsoid's normalised radius along unit direction (u_x, u_y, .): a head is
    narrower at the forehead than across the parietal and occipital bones (up to 4 %)."""
    return 1.0 + 0.12 * u_y * u_x * u_x


class _Head:
    """The head frame of one case over the voxels of the head's bounding box.

    `p` holds the head-frame coordinates (mm) of every voxel centre in the box `crop` of the full
    grid; `depth` the depth below the scalp, `inner` the depth inside the skull's inner table.
    Everything outside the box is air, so nothing else is computed there.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]):
        self.spacing = np.asarray(spacing, dtype=np.float64)
        extent = np.asarray(shape) * self.spacing
        # Outer semi-axes of the scalp (mm): left-right, front-back, up-down.
        size = rng.uniform(0.9, 1.05)
        self.axes = np.array([rng.uniform(68, 76), rng.uniform(86, 95), 80.0]) * size
        # Below the centre the head narrows much less than an ellipsoid: the skull base and
        # posterior fossa are wide. The lower half uses a longer vertical semi-axis.
        self.lower_axis = float(self.axes[2]) * LOWER_HEAD_STRETCH
        self.rotation = _rotation(math.radians(rng.uniform(-14, 14)),
                                  math.radians(rng.uniform(-8, 8)),
                                  math.radians(rng.uniform(-5, 5)))
        centre = extent / 2 + np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0])
        # Scans run from the skull base to the vertex: put the vertex a little below the top
        # slice when the scan is long enough to hold it, otherwise cover the upper head.
        centre[2] = extent[2] - self.axes[2] - rng.uniform(5, 15)
        if centre[2] < extent[2] / 2 - 20:
            centre[2] = extent[2] / 2 + rng.uniform(-5, 25)
        self.centre = centre
        # The rotated ellipsoid's half-extents along the grid axes (10 % for the outline factor),
        # plus a few voxels of air so the blur sees the head's edge.
        bound = np.array([self.axes[0], self.axes[1], self.lower_axis]) * 1.1
        half = np.sqrt(((self.rotation * bound) ** 2).sum(axis=1))
        self.lo = np.maximum(np.floor((centre - half) / self.spacing).astype(int) - 3, 0)
        hi = np.minimum(np.ceil((centre + half) / self.spacing).astype(int) + 4, shape)
        self.crop = tuple(slice(int(a), int(b)) for a, b in zip(self.lo, hi, strict=True))
        self.shape = tuple(int(b - a) for a, b in zip(self.lo, hi, strict=True))
        # Grid coordinates relative to the head's centre (mm), one 1D array per axis.
        self.grid = [(np.arange(a, b) * s - c).astype(np.float32)
                     for a, b, s, c in zip(self.lo, hi, self.spacing, centre, strict=True)]
        # Head-frame coordinates p = R^T (q - c), built by broadcasting the three axes.
        gx, gy, gz = self.grid[0][:, None, None], self.grid[1][None, :, None], self.grid[2]
        r = [[float(v) for v in row] for row in self.rotation]
        self.p = [r[0][a] * gx + r[1][a] * gy + r[2][a] * gz for a in range(3)]
        px, py, pz = self.p
        self.radius = np.sqrt(px * px + py * py + pz * pz) + 1e-3
        # Depth below the scalp along the ray from the centre (close to the normal distance for a
        # near-spherical head).
        u_x, u_y = px / self.radius, py / self.radius
        ia, ib, ic = (float(1 / a) for a in self.axes)
        pz_scaled = pz * np.where(pz > 0, np.float32(ic), np.float32(1 / self.lower_axis))
        norm = np.sqrt((px * ia) ** 2 + (py * ib) ** 2 + pz_scaled * pz_scaled)
        norm *= _outline_factor(u_x, u_y)
        self.depth = self.radius * (1.0 / np.maximum(norm, 1e-3) - 1.0)
        self.scalp = float(rng.uniform(4.0, 6.5))
        # Skull thicker at the occiput and frontal bone than at the temporal squama.
        self.skull = float(rng.uniform(5.5, 7.5)) * (1.0 + 0.12 * u_y * u_y - 0.25 * u_x * u_x)
        self.inner = self.depth - self.scalp - self.skull

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
        """Bounding box, in the crop's voxels, of a head-frame sphere."""
        q = self.rotation @ centre + self.centre
        lo = np.floor((q - radius) / self.spacing).astype(int) - self.lo
        hi = np.ceil((q + radius) / self.spacing).astype(int) + 1 - self.lo
        return tuple(slice(int(max(0, a)), int(max(0, min(n, b))))
                     for a, b, n in zip(lo, hi, self.shape, strict=True))

    def coords(self, box: tuple[slice, slice, slice]) -> list[np.ndarray]:
        return [c[box] for c in self.p]

    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float]
                  ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """An axis-aligned head-frame ellipsoid: its bounding box and the mask within it."""
        box = self.box(np.asarray(centre, dtype=np.float64), max(radii))
        total = 0.0
        for c, m, r in zip(self.coords(box), centre, radii, strict=True):
            total = total + ((c - float(m)) * float(1 / r)) ** 2
        return box, total < 1

    def surface_point(self, direction: np.ndarray, inward: float) -> np.ndarray:
        """The head-frame point `inward` mm inside the scalp surface along `direction`."""
        u = direction / np.linalg.norm(direction)
        axes = self.axes if u[2] > 0 else (*self.axes[:2], self.lower_axis)
        at_surface = 1.0 / (np.sqrt(((u / axes) ** 2).sum()) * _outline_factor(u[0], u[1]))
        return u * (at_surface - inward)

    def random_field(self, rng: np.random.Generator, wavelength: float,
                     waves: int = 8) -> tuple[np.ndarray, float]:
        """A smooth random field of unit variance over the crop, and its typical gradient (/mm).

        |field| / gradient approximates the distance to the field's zero set, which is how sulci
        of a given width are cut. Each wave cos(w . q + phase) is separable in the grid axes,
        cos(a_xy + b_z) = cos a_xy cos b_z - sin a_xy sin b_z, so the sum over waves is one
        (X*Y, 2K) @ (2K, Z) matrix product instead of K cosines over the whole volume.
        """
        k = 2 * math.pi / wavelength
        gx, gy, gz = self.grid
        in_plane, along_z = [], []
        for _ in range(waves):
            v = rng.normal(size=3)
            w = self.rotation @ (v * (k / np.linalg.norm(v)))  # the wave vector in grid axes
            phase = rng.uniform(0, 2 * math.pi)
            a = (float(w[0]) * gx)[:, None] + (float(w[1]) * gy)[None, :] + float(phase)
            b = float(w[2]) * gz
            in_plane += [np.cos(a), -np.sin(a)]
            along_z += [np.cos(b), np.sin(b)]
        xy = np.stack(in_plane, axis=-1).reshape(-1, 2 * waves)
        field = (xy @ np.stack(along_z)).reshape(self.shape)
        field *= math.sqrt(2.0 / waves)
        return field, k


def _draw_anatomy(rng: np.random.Generator, head: _Head) -> np.ndarray:
    """The tissue map of a normal head over the head's crop."""
    tissues = np.zeros(head.shape, np.uint8)
    tissues[head.depth > 0] = SCALP
    tissues[head.depth > head.scalp] = SKULL
    tissues[head.inner > 0] = CSF
    atrophy = float(rng.uniform(0.0, 1.0))  # older brains: wider sulci, larger ventricles
    csf_layer = 1.0 + 1.5 * atrophy
    brain = head.inner - csf_layer  # depth below the brain surface
    tissues[brain > 0] = WHITE
    cortex = float(rng.uniform(2.5, 3.5))
    sulcal_depth = float(rng.uniform(14, 20))
    px, py, pz = head.p
    # Sulci: the zero set of a random field, narrowing with depth; cortex lines them.
    near_surface = (brain > 0) & (brain < sulcal_depth + cortex)
    field, gradient = head.random_field(rng, wavelength=float(rng.uniform(17, 23)))
    distance = np.abs(field) * (1.0 / gradient)  # mm to the nearest sulcus, approximately
    sulcus_width = (0.6 + 0.9 * atrophy) * (1.0 - brain * (1.0 / sulcal_depth))
    tissues[near_surface & ((brain < cortex) | (distance < sulcus_width + cortex))] = GREY
    tissues[near_surface & (distance < sulcus_width) & (brain < sulcal_depth)] = CSF
    # Interhemispheric fissure with the falx in it, deepest at the front and back.
    fissure_depth = 25.0 + (15.0 / float(head.axes[1])) * np.abs(py)
    fissure = (np.abs(px) < 1.2 + 0.8 * atrophy) & (brain < fissure_depth) & (head.inner > 0)
    tissues[fissure] = CSF
    tissues[fissure & (np.abs(px) < 0.5) & (pz > -25)] = FALX
    # Sylvian fissures: winding oblique clefts from the lateral surface in to the insula.
    for side in (-1, 1):
        box = head.box(np.array([side * 55.0, 16.0, -15.0]), 30.0)
        x, y, z = head.coords(box)
        lateral = side * x
        course = 8.0 + 0.35 * (lateral - 30.0) + 0.15 * z + 3.0 * np.sin(
            0.3 * lateral + 0.2 * z + float(rng.uniform(0, 2 * math.pi)))
        sylvian = ((np.abs(y - course) < 0.7 + atrophy) & (lateral > 36) & (z > -30) & (z < 0)
                   & (head.inner[box] > 0))
        tissues[box][sylvian] = CSF
    # Deep grey nuclei (basal ganglia, thalami) either side of the ventricles.
    for side in (-1, 1):
        for centre, radii in (((side * 20, 8, -8), (8, 16, 11)), ((side * 10, -10, -6), (8, 11, 9))):
            box, inside = head.ellipsoid(centre, radii)
            tissues[box][inside] = GREY
    # Lateral ventricles: ")(" either side of the septum, closest behind the frontal horns and
    # diverging most towards the atria; arched, so their ends sit lower than their bodies. The
    # third ventricle is a midline slit below them.
    scale = 0.8 + 0.5 * atrophy
    width = 5.0 * scale
    box = head.box(np.array([0.0, -5.0, 5.0]), 50.0)
    x, y, z = head.coords(box)
    yv = (y + 5.0) * (1.0 / (38.0 * min(scale, 1.15)))
    zv = (z - 8.0 + 10.0 * yv * yv) * (1.0 / (13.0 * scale))
    behind = np.maximum(-yv, 0.0)
    spread = 1.0 + width + 4.0 * (yv - 0.4) ** 2 + 10.0 * behind * behind  # mm off the midline
    for side in (-1, 1):
        xv = (side * x - spread) * (1.0 / width)
        tissues[box][(xv * xv + yv * yv + zv * zv < 1) & (side * x > 0.8)] = VENTRICLE
    third = (np.abs(x) < 1.0 + 1.5 * atrophy) & (np.abs(y + 2.0) < 12) & (z > -22) & (z < -4)
    tissues[box][third] = VENTRICLE
    # Calcified choroid plexus in the atria, and the pineal gland: classic bright mimics.
    for centre in ((-17.0 * scale, -28.0, 4.0), (17.0 * scale, -28.0, 4.0), (0.0, -20.0, -10.0)):
        if rng.random() < 0.6:
            box, spot = head.ellipsoid(centre, (2.5, 2.5, 2.5))
            tissues[box][spot] = CALCIFICATION
    return tissues


def _logistic(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


def _draw_skull_base(head: _Head, tissues: np.ndarray) -> None:
    """The lowest slices: the cranial floor stepping down from the anterior to the middle and
    posterior fossae, a plate of bone with the face's soft tissue, orbits and sinuses below it,
    the petrous ridges and clivus, the tentorium and the fourth ventricle.

    No random draws: it follows the head's size and pose, and leaves the rest of the case's
    random stream as it was.
    """
    top = SKULL_BASE_TOP
    lowest = head.p[2].min(axis=(0, 1))  # per slice
    slices = np.flatnonzero(lowest < top)
    if slices.size == 0:
        return
    box = (slice(None), slice(None), slice(int(slices.min()), int(slices.max()) + 1))
    x, y, z = head.coords(box)
    ax = np.abs(x)
    t = tissues[box]  # a view: drawing on it draws on the case
    inside = head.inner[box] > 0
    # Cranial floor: the anterior fossa, domed over each orbit and dipping at the cribriform
    # plate; behind the sphenoid ridges (curving back laterally) the middle fossa (temporal
    # lobes) about 20 mm lower; behind the petrous ridges the posterior fossa lower still.
    floor = (top + 6.0 * np.exp(-(((ax - 28.0) * (1 / 14.0)) ** 2))
             - 5.0 * np.exp(-((x * (1 / 5.0)) ** 2))
             - 26.0 * _logistic((22.0 - 0.3 * ax - y) * 0.3)
             - 20.0 * _logistic((-12.0 - y) * 0.3))
    # The brain rests on the floor through a thin layer of CSF, its cortex above that.
    above = z - floor
    t[(t == WHITE) & (above < 4.0)] = GREY
    t[np.isin(t, (GREY, WHITE)) & (above < 1.5)] = CSF
    # Below the floor: a plate of bone, then the soft tissue of the face and skull base.
    t[inside & (above < 0)] = SKULL
    t[inside & (above < -FLOOR_THICKNESS_MM)] = SCALP
    # Petrous ridges, from the apex beside the clivus back and out to the mastoid, and the
    # clivus itself, between the middle and posterior fossae.
    petrous = (ax > 12) & (np.abs(y + 2.0 + 0.6 * (ax - 12.0)) < 5.0)
    clivus = (ax < 13) & (np.abs(y - 4.0 + 0.5 * (top - 22.0 - z)) < 6.0)
    t[inside & (petrous | clivus) & (z < top - 20) & (z > top - 60)] = SKULL
    # Tentorium: a dural sheet sloping down and back over the cerebellum.
    tentorium = np.abs(z - (top - 20.0) - 0.3 * (y + 12.0)) < 0.6
    t[tentorium & (y < -14) & np.isin(t, (GREY, WHITE, CSF))] = FALX

    # Air spaces, the orbits (fat around the globe) and the fourth ventricle, each kept inside
    # the skull or under the scalp.
    def intracranial(part):
        return head.inner[part] > 0

    def under_scalp(part):
        return head.depth[part] > head.scalp

    for code, centre, radii, within in (
            (AIR, (0.0, 14.0, top - 32), (11, 9, 9), under_scalp),  # sphenoid sinus
            (AIR, (0.0, 50.0, top - 30), (6, 22, 12), under_scalp),  # nasal cavity
            (AIR, (-44.0, -24.0, top - 40), (7, 8, 8), intracranial),  # mastoid air cells
            (AIR, (44.0, -24.0, top - 40), (7, 8, 8), intracranial),
            (FAT, (-30.0, 56.0, top - 22), (15, 20, 13), under_scalp),
            (FAT, (30.0, 56.0, top - 22), (15, 20, 13), under_scalp),
            (EYE, (-30.0, 62.0, top - 22), (11, 11, 11), under_scalp),
            (EYE, (30.0, 62.0, top - 22), (11, 11, 11), under_scalp),
            (VENTRICLE, (0.0, -34.0, top - 36), (6, 4, 7), intracranial)):
        part, mask = head.ellipsoid(centre, radii)
        tissues[part][mask & within(part)] = code


def _direction_on_convexity(rng: np.random.Generator) -> np.ndarray:
    """A direction from the head's centre to its lateral or upper convexity."""
    side = rng.choice([-1.0, 1.0])
    u = np.array([side * rng.uniform(0.6, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-0.1, 0.7)])
    return u / np.linalg.norm(u)


Lesion = tuple[tuple[slice, slice, slice], np.ndarray]  # bounding box in the crop, mask in it


def _extra_axial(rng: np.random.Generator, head: _Head, tissues: np.ndarray,
                 subtype: int) -> Lesion:
    """An EDH (biconvex lens) or SDH (crescent) against the inner table.

    Its thickness tapers with the angle `a` from its centre direction: sqrt(1 - (a/A)^2) bulges
    inward like an EDH held by the sutures, (1 - (a/A)^2) hugs the skull like an SDH.
    """
    u0 = _direction_on_convexity(rng)
    if subtype == EDH:
        extent, thickness = math.radians(rng.uniform(16, 30)), float(rng.uniform(8, 22))
    else:
        extent, thickness = math.radians(rng.uniform(35, 65)), float(rng.uniform(3, 12))
    inner_radius = float(np.linalg.norm(head.surface_point(u0, head.scalp + 7.0)))
    box = head.box(u0 * (inner_radius - thickness / 2), inner_radius * extent + thickness)
    x, y, z = head.coords(box)
    ux, uy, uz = (float(v) for v in u0)
    cos_a = (x * ux + y * uy + z * uz) / head.radius[box]
    angle = np.arccos(np.clip(cos_a, -1.0, 1.0)) * (1.0 / extent)
    taper = np.clip(1.0 - angle * angle, 0.0, None)
    profile = np.sqrt(taper) if subtype == EDH else taper
    inner = head.inner[box]
    space = np.isin(tissues[box], EXTRA_AXIAL_SPACE)
    return box, space & (inner > 0) & (inner < thickness * profile)


def _intraparenchymal(rng: np.random.Generator, head: _Head, tissues: np.ndarray,
                      label: np.ndarray) -> Lesion | None:
    """A lobulated blob in grey or white matter with an oedema rim; None if there is no room."""
    radius = float(rng.uniform(4, 18))
    # Stretch and lobulation reach up to twice the radius: keep the clot inside the brain.
    candidates = np.flatnonzero((tissues == WHITE) & (head.inner > 2 * radius + 6)
                                & (head.p[2] > SKULL_BASE_TOP + 2 * radius))
    if candidates.size == 0:
        return None
    centre = np.array([c.flat[rng.choice(candidates)] for c in head.p], dtype=np.float64)
    box = head.box(centre, radius * 1.8)
    x, y, z = head.coords(box)
    stretch = rng.uniform(0.7, 1.3, size=3)
    dx, dy, dz = ((c - float(m)) * float(1 / s) for c, m, s in zip((x, y, z), centre, stretch,
                                                                    strict=True))
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    # Lobulated outline: the radius varies with direction by a few random waves over the sphere.
    outline = np.ones_like(r)
    for _ in range(4):
        v = rng.normal(size=3) * 2.5
        outline += float(rng.uniform(0.06, 0.14)) * np.cos(
            (float(v[0]) * dx + float(v[1]) * dy + float(v[2]) * dz) / r + float(rng.uniform(0, 6.3)))
    outline *= radius
    parenchyma = np.isin(tissues[box], (GREY, WHITE))
    # The clot fills the sulci it reaches, but stops at the ventricle walls, the falx and skull.
    blood = (r < outline) & np.isin(tissues[box], (GREY, WHITE, CSF)) & (head.inner[box] > 4)
    # Perihematomal oedema: a hypodense rim in the surrounding parenchyma.
    edema = (r < outline * float(rng.uniform(1.15, 1.4))) & parenchyma & ~blood & (label[box] == 0)
    tissues[box][edema] = EDEMA
    return box, blood


def _intraventricular(rng: np.random.Generator, head: _Head, tissues: np.ndarray) -> Lesion:
    """Blood layering in the dependent (posterior, patient supine) part of the ventricles."""
    box = head.box(np.array([0.0, -5.0, 0.0]), 55.0)
    x, y, _ = head.coords(box)
    level = float(rng.uniform(-35, 5))  # blood-CSF level along the anterior axis
    side = float(rng.choice([-1.0, 1.0, 0.0]))  # one lateral ventricle, or both
    blood = (tissues[box] == VENTRICLE) & (y < level)
    if side:
        blood &= side * x > 0
    return box, blood


def _subarachnoid(rng: np.random.Generator, head: _Head, tissues: np.ndarray) -> Lesion:
    """Blood in the sulci, fissures and surface CSF of one region."""
    if rng.random() < 0.3:  # around the Sylvian fissure, where aneurysms bleed
        centre = np.array([rng.choice([-1, 1]) * rng.uniform(30, 45), rng.uniform(0, 20),
                           rng.uniform(-25, -5)])
    else:
        centre = head.surface_point(_direction_on_convexity(rng), head.scalp + 15.0)
    radius = float(rng.uniform(15, 35))
    box = head.box(centre, radius)
    x, y, z = head.coords(box)
    cx, cy, cz = (float(c) for c in centre)
    near = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < radius * radius
    return box, near & (tissues[box] == CSF)


def _tissue_hu(rng: np.random.Generator, head: _Head, tissues: np.ndarray) -> np.ndarray:
    """HU of the normal anatomy, before blur and noise."""
    lut = np.zeros(len(TISSUES), np.float32)
    for name, code in TISSUES.items():
        if name not in ("skull", "ventricle", "scalp"):
            lut[code] = rng.uniform(*HU_RANGES[name])
    lut[VENTRICLE] = lut[CSF]
    lut[SCALP] = rng.uniform(*HU_RANGES["scalp_skin"])
    hu = lut[tissues]
    # The scalp: skin and galea outside and inside, subcutaneous fat between.
    scalp = tissues == SCALP
    t = head.depth[scalp] * (1.0 / head.scalp)
    hu[scalp] = np.where((t > 0.3) & (t < 0.7), np.float32(rng.uniform(*HU_RANGES["scalp_fat"])),
                         hu[scalp])
    # The skull: dense cortical tables outside and inside, diploe between.
    diploe = float(rng.uniform(*HU_RANGES["skull_diploe"]))
    table = float(rng.uniform(*HU_RANGES["skull_table"]))
    bone = tissues == SKULL
    t = (head.depth[bone] - head.scalp) / head.skull[bone]  # 0 outer, 1 inner table
    hu[bone] = diploe + (table - diploe) * np.clip(np.abs(2 * t - 1), 0, 1) ** 2
    return hu


def make_case(seed: int, shape: Sequence[int] = DEFAULT_SHAPE,
              spacing: Sequence[float] = DEFAULT_SPACING, index: int = 0,
              clean: bool = False) -> SyntheticCase:
    """Draw case `index` of `seed`: a head CT with 0 to 4 hemorrhages of the five subtypes.

    `clean=True` leaves out the scanner's blur and noise (tests check the drawn HU values).
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng([int(seed), int(index)])
    head = _Head(rng, shape, spacing)
    tissues = _draw_anatomy(rng, head)
    _draw_skull_base(head, tissues)
    label = np.zeros(head.shape, np.uint8)
    lesions: list[Lesion] = []
    count = 0 if rng.random() < EMPTY_CASE_FRACTION else int(rng.integers(1, 5))
    subtypes = rng.choice(list(SUBTYPE_WEIGHTS), size=count, p=list(SUBTYPE_WEIGHTS.values()))
    for subtype in subtypes:
        if subtype in (EDH, SDH):
            lesion = _extra_axial(rng, head, tissues, subtype)
        elif subtype == IPH:
            lesion = _intraparenchymal(rng, head, tissues, label)
        elif subtype == IVH:
            lesion = _intraventricular(rng, head, tissues)
        else:
            lesion = _subarachnoid(rng, head, tissues)
        if lesion is not None and lesion[1].any():
            label[lesion[0]][lesion[1]] = subtype
            lesions.append(lesion)

    hu = _tissue_hu(rng, head, tissues)
    for box, mask in lesions:
        # Each clot has its own density, with a gentle internal variation.
        x, y, z = head.coords(box)
        wave = np.sin(0.25 * x + float(rng.uniform(0, 6.3))) * np.cos(0.2 * y + 0.3 * z)
        mean = float(rng.uniform(*HU_RANGES["blood"]))
        hu[box][mask] = (mean + BLOOD_VARIATION_HU * wave)[mask]

    if not clean:
        hu = _scan(rng, hu, spacing)
    out_hu = np.full(shape, HU_RANGES["air"][0], np.int16)
    out_hu[head.crop] = np.clip(np.rint(hu), -1024, 3071)
    out_tissues = np.zeros(shape, np.uint8)
    out_tissues[head.crop] = tissues
    out_label = np.zeros(shape, np.uint8)
    out_label[head.crop] = label
    return SyntheticCase(hu=out_hu, label=out_label, tissues=out_tissues,
                         affine=_scanner_affine(rng, shape, spacing))


def _scan(rng: np.random.Generator, hu: np.ndarray, spacing: tuple[float, float, float]
          ) -> np.ndarray:
    """What the scanner adds: partial-volume blur and correlated noise of a few HU.

    A voxel integrates its footprint (a box of one voxel: sigma = 1/sqrt(12) voxels) smoothed by
    the point-spread function. The noise is added before that blur, which correlates it as a
    reconstruction kernel does, scaled up by the kernel's own attenuation so that its standard
    deviation after the blur is the drawn one. Only the head's crop is processed: the air around
    it is uniform.
    """
    noise_sd = float(rng.uniform(*NOISE_SD_HU))
    sigma = [math.sqrt(1 / 12 + (psf / s) ** 2) for psf, s in zip(PSF_SIGMA_MM, spacing,
                                                                    strict=True)]
    attenuation = math.prod(math.sqrt(float((w * w).sum())) for w in map(_gaussian_weights, sigma))
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd / attenuation)
    return ndimage.gaussian_filter(hu, sigma, truncate=BLUR_TRUNCATE, mode="nearest")


def _gaussian_weights(sigma: float) -> np.ndarray:
    """The 1D kernel scipy.ndimage.gaussian_filter uses for `sigma` at BLUR_TRUNCATE."""
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * x * x / sigma ** 2)
    return w / w.sum()


def _scanner_affine(rng: np.random.Generator, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel -> RAS mm: axes along R, A, S with a gantry tilt, centred near the isocentre."""
    tilt = math.radians(rng.uniform(-12, 12))
    rotation = _rotation(math.radians(rng.uniform(-2, 2)), tilt, 0.0)
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    centre_voxel = (np.asarray(shape) - 1) / 2
    table = np.array([rng.uniform(-5, 5), rng.uniform(-20, 20), rng.uniform(-60, 60)])
    affine[:3, 3] = table - affine[:3, :3] @ centre_voxel
    return affine


def resolve_geometry(shape: Sequence[int] | None,
                     spacing: Sequence[float] | None) -> tuple[tuple[int, int, int],
                                                               tuple[float, float, float]]:
    """Fill in shape or spacing, keeping the field of view a head's, and validate both."""
    if shape is not None and len(shape) != 3:
        raise UsageError(f"--shape needs three sizes X Y Z, got {list(shape)}.")
    if spacing is not None and len(spacing) != 3:
        raise UsageError(f"--spacing needs three values SX SY SZ in mm, got {list(spacing)}.")
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UsageError(f"--spacing must be three positive sizes in mm, got {list(spacing)}.")
    if shape is None and spacing is None:
        shape, spacing = DEFAULT_SHAPE, DEFAULT_SPACING
    elif spacing is None:
        spacing = (FIELD_OF_VIEW_MM / shape[0], FIELD_OF_VIEW_MM / shape[1], DEFAULT_SPACING[2])
    elif shape is None:
        shape = (math.ceil(FIELD_OF_VIEW_MM / spacing[0]), math.ceil(FIELD_OF_VIEW_MM / spacing[1]),
                 max(MIN_SHAPE[2], round(SCAN_LENGTH_MM / spacing[2])))
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if any(n < m for n, m in zip(shape, MIN_SHAPE, strict=True)):
        raise UsageError(f"--shape {' '.join(map(str, shape))} is too small for a head: "
                         f"use at least {' '.join(map(str, MIN_SHAPE))} voxels.")
    fov = [n * s for n, s in zip(shape[:2], spacing[:2], strict=True)]
    if min(fov) < MIN_FIELD_OF_VIEW_MM:
        raise UsageError(f"--shape {' '.join(map(str, shape))} at --spacing "
                         f"{' '.join(f'{s:g}' for s in spacing)} covers {fov[0]:.0f} x {fov[1]:.0f} mm"
                         f" in-plane; a head needs at least {MIN_FIELD_OF_VIEW_MM:.0f} mm.")
    return shape, spacing


def _whole_number(value: object, key: str, minimum: int) -> int:
    try:
        number = operator.index(value)  # ints and NumPy integers, not floats or bools
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise UsageError(f"{key} must be a whole number of at least {minimum}, got {value!r}.")
    return number


def _check_destination(out: Path, ids: list[str]) -> None:
    """Refuse an OUT that cannot hold the dataset, or that holds other scans, before writing.

    Other NIfTI files in OUT/images or OUT/labels (a real dataset, or the extra cases of an
    earlier, larger synth run) would be read as part of this dataset.
    """
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{existing} is a file; synth needs a folder there.")
    if (out / "dataset.json").is_dir():
        raise UsageError(f"{out / 'dataset.json'} is a folder; synth writes a file there.")
    for folder in (out / "images", out / "labels"):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file; synth needs a folder there.")
        if folder.is_dir():
            others = [p for p in nifti_files(folder) if nifti_stem(p.name) not in ids]
            if others:
                raise UsageError(f"{others[0]} is not one of the {len(ids)} cases to write; "
                                 "give synth an empty or new folder.")


def case_ids(cases: int) -> list[str]:
    width = max(3, len(str(cases - 1)))
    return [f"synth_{k:0{width}d}" for k in range(cases)]


def write_dataset(out_dir: str | Path, cases: int, seed: int = 0,
                  shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None) -> list[str]:
    """Write `cases` synthetic cases as NIfTI in the generic layout; return their ids.

    `OUT/images/<case>.nii.gz` (int16 HU), `OUT/labels/<case>.nii.gz` (uint8 codes) and an
    nnU-Net-style `OUT/dataset.json` that also records the seed, shape and spacing used.
    """
    out = Path(out_dir)
    cases = _whole_number(cases, "--cases", minimum=1)
    seed = _whole_number(seed, "--seed", minimum=0)
    shape, spacing = resolve_geometry(shape, spacing)
    ids = case_ids(cases)
    _check_destination(out, ids)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for index, case_id in enumerate(tqdm(ids, desc="synth", unit="case", disable=None)):
        case = make_case(seed, shape, spacing, index=index)
        write_nifti(out / "images" / f"{case_id}.nii.gz", case.hu, case.affine)
        write_nifti(out / "labels" / f"{case_id}.nii.gz", case.label, case.affine)
    description = {
        "name": "ichseg-synth",
        "description": "Synthetic non-contrast head CT with intracranial hemorrhage (ichseg synth)",
        "tensorImageSize": "3D",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "training": [{"case": c, "image": f"./images/{c}.nii.gz", "label": f"./labels/{c}.nii.gz"}
                     for c in ids],
        "seed": seed,
        "shape": list(shape),
        "spacing": list(spacing),
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return ids
