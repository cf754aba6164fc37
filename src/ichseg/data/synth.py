"""Synthetic non-contrast head CT with the five hemorrhage subtypes, for tests and demos.

A case is drawn analytically: every voxel centre is mapped into a head frame (x right, y anterior,
z superior, mm, origin at the head's centre) and the anatomy is a set of nested, slightly
irregular ellipsoid shells (scalp, skull, subarachnoid CSF, cortex over white matter), with
sulci cut where a random smooth field crosses zero, lateral and third ventricles, deep grey
nuclei, the falx and choroid-plexus calcifications. Hemorrhages are drawn in the places and
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ichseg.errors import UsageError

# Label codes of the contract (BHSD's order).
LABELS = {"background": 0, "EDH": 1, "IPH": 2, "IVH": 3, "SAH": 4, "SDH": 5}
EDH, IPH, IVH, SAH, SDH = 1, 2, 3, 4, 5

# Tissue classes of `SyntheticCase.tissues`: the anatomy drawn, before hemorrhage. Where a lesion
# is, the map keeps the tissue the blood replaced, so tests can ask where each subtype lies.
TISSUES = {"air": 0, "scalp": 1, "skull": 2, "grey": 3, "white": 4, "csf": 5, "ventricle": 6,
           "edema": 7, "falx": 8, "calcification": 9}
AIR, SCALP, SKULL, GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION = range(10)

# HU ranges, drawn once per case (before blur and noise). Skull values vary across its thickness
# between diploe and the cortical tables. Blood is drawn per lesion.
HU_RANGES = {
    "air": (-1000.0, -1000.0),
    "scalp": (25.0, 45.0),
    "skull_diploe": (700.0, 950.0),
    "skull_table": (1350.0, 1600.0),
    "grey": (35.0, 42.0),
    "white": (24.0, 30.0),
    "csf": (3.0, 10.0),
    "edema": (12.0, 19.0),
    "falx": (45.0, 65.0),
    "calcification": (120.0, 250.0),
    "blood": (56.0, 84.0),
}
BLOOD_VARIATION_HU = 5.0  # low-frequency clot heterogeneity on top of a lesion's mean

DEFAULT_SHAPE = (512, 512, 32)
DEFAULT_SPACING = (0.45, 0.45, 5.0)
FIELD_OF_VIEW_MM = 230.0  # in-plane, when only one of shape and spacing is given
SCAN_LENGTH_MM = 160.0  # along z, when only the spacing is given
MIN_FIELD_OF_VIEW_MM = 200.0  # a head is up to ~196 mm front to back
MIN_SHAPE = (24, 24, 2)
EMPTY_CASE_FRACTION = 0.15
SUBTYPE_WEIGHTS = {EDH: 0.13, IPH: 0.27, IVH: 0.15, SAH: 0.23, SDH: 0.22}

# Scanner point-spread function (Gaussian sigma, mm) and the thick slice's own profile: the
# partial-volume blur is the voxel footprint (a box of one voxel, sigma = width / sqrt(12))
# combined with this PSF.
PSF_SIGMA_MM = (0.35, 0.35, 0.6)
NOISE_CORRELATION_VOXELS = 0.6


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


class _Head:
    """The head frame of one case: coordinates of every voxel centre, and its shell depths."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]):
        self.shape, self.spacing = shape, np.asarray(spacing, dtype=np.float64)
        extent = np.asarray(shape) * self.spacing
        # Outer semi-axes of the scalp (mm): left-right, front-back, up-down.
        size = rng.uniform(0.9, 1.05)
        self.axes = np.array([rng.uniform(68, 76), rng.uniform(86, 95), 80.0]) * size
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
        # Head-frame coordinates p = R^T (q - c), built by broadcasting three 1D axes.
        grid = [(np.arange(n) * s - c).astype(np.float32)
                for n, s, c in zip(shape, self.spacing, centre, strict=True)]
        r = self.rotation.astype(np.float32)
        self.p = [r[0, a] * grid[0][:, None, None] + r[1, a] * grid[1][None, :, None]
                  + r[2, a] * grid[2][None, None, :] for a in range(3)]
        self.radius = np.sqrt(self.p[0] ** 2 + self.p[1] ** 2 + self.p[2] ** 2) + 1e-3
        # Depth below the scalp along the ray from the centre (close to the normal distance for a
        # near-spherical head). The outline is an ellipsoid made egg-shaped: wider at the back.
        u_y = self.p[1] / self.radius
        egg = 1.0 - 0.05 * u_y + 0.03 * u_y * u_y
        norm = np.sqrt((self.p[0] / self.axes[0]) ** 2 + (self.p[1] / self.axes[1]) ** 2
                       + (self.p[2] / self.axes[2]) ** 2) * egg
        self.depth = self.radius * (1.0 / np.maximum(norm, 1e-3) - 1.0)
        self.scalp = rng.uniform(4.0, 6.5)
        skull = rng.uniform(5.5, 7.5)
        # Thicker at the occiput and frontal bone than at the temporal squama.
        u_x = self.p[0] / self.radius
        self.skull = skull * (1.0 + 0.12 * u_y * u_y - 0.25 * u_x * u_x)
        # Depth inside the inner table of the skull: > 0 is intracranial.
        self.inner = self.depth - self.scalp - self.skull

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
        """Voxel bounding box of a head-frame sphere (clipped to the grid)."""
        q = self.rotation @ centre + self.centre
        lo = np.floor((q - radius) / self.spacing).astype(int)
        hi = np.ceil((q + radius) / self.spacing).astype(int) + 1
        return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, self.shape, strict=True))

    def coords(self, box: tuple[slice, slice, slice]) -> list[np.ndarray]:
        return [c[box] for c in self.p]

    def surface_point(self, direction: np.ndarray, inward: float) -> np.ndarray:
        """The head-frame point `inward` mm inside the scalp surface along `direction`."""
        u = direction / np.linalg.norm(direction)
        egg = 1.0 - 0.05 * u[1] + 0.03 * u[1] ** 2
        at_surface = 1.0 / (np.sqrt(((u / self.axes) ** 2).sum()) * egg)
        return u * (at_surface - inward)


def _random_field(rng: np.random.Generator, p: Sequence[np.ndarray], wavelength: float,
                  waves: int = 8) -> tuple[np.ndarray, float]:
    """A smooth random field of unit variance, and its typical gradient (per mm).

    |field| / gradient approximates the distance to the field's zero set, which is how sulci of a
    given width are cut.
    """
    k = 2 * math.pi / wavelength
    field = np.zeros(p[0].shape, np.float32)
    for _ in range(waves):
        v = rng.normal(size=3)
        v *= k / np.linalg.norm(v)
        phase = rng.uniform(0, 2 * math.pi)
        field += np.cos(v[0] * p[0] + v[1] * p[1] + v[2] * p[2] + phase, dtype=np.float32)
    field *= math.sqrt(2.0 / waves)
    return field, k


def _draw_anatomy(rng: np.random.Generator, head: _Head) -> np.ndarray:
    """The tissue map of a normal head."""
    tissues = np.zeros(head.shape, np.uint8)
    tissues[head.depth > 0] = SCALP
    tissues[head.depth > head.scalp] = SKULL
    tissues[head.inner > 0] = CSF
    atrophy = rng.uniform(0.0, 1.0)  # older brains: wider sulci, larger ventricles
    csf_layer = 1.0 + 1.5 * atrophy
    brain = head.inner - csf_layer  # depth below the brain surface
    tissues[brain > 0] = WHITE
    cortex = rng.uniform(2.5, 3.5)
    sulcal_depth = rng.uniform(14, 20)
    px, py, pz = head.p
    # Sulci: the zero set of a random field, narrowing with depth; cortex lines them.
    near_surface = (brain > 0) & (brain < sulcal_depth + cortex)
    field, gradient = _random_field(rng, head.p, wavelength=rng.uniform(22, 30))
    distance = np.abs(field) / gradient  # mm to the nearest sulcus, approximately
    sulcus_width = (0.6 + 0.9 * atrophy) * (1.0 - brain / sulcal_depth)
    tissues[near_surface & ((brain < cortex) | (distance < sulcus_width + cortex))] = GREY
    tissues[near_surface & (distance < sulcus_width) & (brain < sulcal_depth)] = CSF
    # Interhemispheric fissure with the falx in it, deepest at the front and back.
    fissure_depth = 25 + 15 * np.abs(py) / head.axes[1]
    fissure = (np.abs(px) < 1.2 + 0.8 * atrophy) & (brain < fissure_depth) & (head.inner > 0)
    tissues[fissure] = CSF
    tissues[fissure & (np.abs(px) < 0.5) & (pz > -25)] = FALX
    # Sylvian fissures: oblique clefts from the lateral surface to the insula.
    sylvian = ((np.abs(py - 8 - 0.35 * (np.abs(px) - 30)) < 1.0 + atrophy)
               & (np.abs(px) > 28) & (pz > -30) & (pz < 0) & (head.inner > 0))
    tissues[sylvian] = CSF
    # Deep grey nuclei (basal ganglia, thalami) either side of the ventricles.
    for side in (-1, 1):
        for centre, radii in (((side * 20, 8, -8), (8, 16, 11)), ((side * 10, -10, -6), (8, 11, 9))):
            box = head.box(np.asarray(centre, float), max(radii))
            x, y, z = head.coords(box)
            inside = (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                      + ((z - centre[2]) / radii[2]) ** 2) < 1
            tissues[box][inside] = GREY
    # Lateral ventricles: two arched bananas, wider apart at their horns; the third ventricle a
    # midline slit below them.
    scale = 0.8 + 0.5 * atrophy
    box = head.box(np.array([0.0, -5.0, 5.0]), 50.0)
    x, y, z = head.coords(box)
    yv = (y + 5.0) / (38 * min(scale, 1.15))
    zv = (z - 8.0 + 10.0 * yv * yv) / (9.0 * scale)
    for side in (-1, 1):
        xv = (side * x - 3.0 - 10.0 * yv * yv) / (4.0 * scale)
        tissues[box][xv * xv + yv * yv + zv * zv < 1] = VENTRICLE
    third = (np.abs(x) < 1.0 + 1.5 * atrophy) & (np.abs(y + 2.0) < 12) & (z > -22) & (z < -4)
    tissues[box][third] = VENTRICLE
    # Calcified choroid plexus in the atria, and the pineal gland: classic bright mimics.
    for centre in ((-17.0 * scale, -28.0, 4.0), (17.0 * scale, -28.0, 4.0), (0.0, -20.0, -10.0)):
        if rng.random() < 0.6:
            c = np.asarray(centre)
            box = head.box(c, 4.0)
            x, y, z = head.coords(box)
            tissues[box][(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 2.5 ** 2] = CALCIFICATION
    return tissues


def _direction_on_convexity(rng: np.random.Generator) -> np.ndarray:
    """A direction from the head's centre to its lateral or upper convexity."""
    side = rng.choice([-1.0, 1.0])
    u = np.array([side * rng.uniform(0.6, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-0.1, 0.7)])
    return u / np.linalg.norm(u)


def _extra_axial(rng: np.random.Generator, head: _Head, subtype: int):
    """An EDH (biconvex lens) or SDH (crescent) against the inner table.

    Its thickness tapers with the angle `a` from its centre direction: sqrt(1 - (a/A)^2) bulges
    inward like an EDH held by the sutures, (1 - (a/A)^2) hugs the skull like an SDH.
    """
    u0 = _direction_on_convexity(rng)
    if subtype == EDH:
        extent, thickness = math.radians(rng.uniform(16, 30)), rng.uniform(8, 22)
    else:
        extent, thickness = math.radians(rng.uniform(35, 65)), rng.uniform(3, 12)
    inner_radius = np.linalg.norm(head.surface_point(u0, head.scalp + 7.0))
    box = head.box(u0 * (inner_radius - thickness / 2), inner_radius * extent + thickness)
    x, y, z = head.coords(box)
    cos_a = (x * u0[0] + y * u0[1] + z * u0[2]) / head.radius[box]
    angle = np.arccos(np.clip(cos_a, -1.0, 1.0)) / extent
    taper = np.clip(1.0 - angle * angle, 0.0, None)
    profile = np.sqrt(taper) if subtype == EDH else taper
    inner = head.inner[box]
    return box, (inner > 0) & (inner < thickness * profile)


def _intraparenchymal(rng: np.random.Generator, head: _Head, tissues: np.ndarray):
    """An irregular blob in grey or white matter, or None if no place was found."""
    radius = rng.uniform(4, 18)
    candidates = np.flatnonzero((tissues == WHITE) & (head.inner > radius + 8))
    if candidates.size == 0:
        return None
    centre = np.array([c.flat[rng.choice(candidates)] for c in head.p])
    box = head.box(centre, radius * 1.6)
    x, y, z = head.coords(box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    # Lobulated outline: the radius varies with direction by a few low-order harmonics.
    a = rng.uniform(-0.18, 0.18, size=3)
    stretch = rng.uniform(0.7, 1.3, size=3)
    outline = radius * (1 + a[0] * dx / r * dy / r + a[1] * dz / r + a[2] * (dx / r) ** 2)
    rs = np.sqrt((dx / stretch[0]) ** 2 + (dy / stretch[1]) ** 2 + (dz / stretch[2]) ** 2)
    parenchyma = np.isin(tissues[box], (GREY, WHITE))
    blood = (rs < outline) & parenchyma
    # Perihematomal oedema: a hypodense rim in the surrounding parenchyma.
    edema = (rs < outline * rng.uniform(1.2, 1.5)) & parenchyma & ~blood
    tissues[box][edema] = EDEMA
    return box, blood


def _intraventricular(rng: np.random.Generator, head: _Head, tissues: np.ndarray):
    """Blood layering in the dependent (posterior, patient supine) part of a ventricle, or a cast."""
    box = head.box(np.array([0.0, -5.0, 0.0]), 55.0)
    x, y, _ = head.coords(box)
    ventricle = tissues[box] == VENTRICLE
    level = rng.uniform(-35, 5)  # blood-CSF level along the anterior axis
    side = rng.choice([-1.0, 1.0, 0.0])  # one lateral ventricle, or both
    blood = ventricle & (y < level)
    if side:
        blood &= side * x > 0
    return box, blood


def _subarachnoid(rng: np.random.Generator, head: _Head, tissues: np.ndarray):
    """Blood in the sulci, fissures and surface CSF of one region."""
    if rng.random() < 0.3:  # around the Sylvian fissure, where aneurysms bleed
        centre = np.array([rng.choice([-1, 1]) * rng.uniform(30, 45), rng.uniform(0, 20),
                           rng.uniform(-25, -5)])
    else:
        centre = head.surface_point(_direction_on_convexity(rng), head.scalp + 15.0)
    radius = rng.uniform(15, 35)
    box = head.box(centre, radius)
    x, y, z = head.coords(box)
    near = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < radius * radius
    return box, near & (tissues[box] == CSF)


def _skull_hu(rng: np.random.Generator, head: _Head, tissues: np.ndarray) -> np.ndarray:
    """HU of skull voxels: dense cortical tables outside and inside, diploe between."""
    diploe = rng.uniform(*HU_RANGES["skull_diploe"])
    table = rng.uniform(*HU_RANGES["skull_table"])
    bone = tissues == SKULL
    t = (head.depth[bone] - head.scalp) / head.skull[bone]  # 0 outer, 1 inner table
    edge = np.clip(np.abs(2 * t - 1), 0, 1) ** 2
    return diploe + (table - diploe) * edge


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
    label = np.zeros(shape, np.uint8)
    blood_hu = []  # (box, mask, HU) per lesion, painted after the tissue HU
    count = 0 if rng.random() < EMPTY_CASE_FRACTION else int(rng.integers(1, 5))
    subtypes = rng.choice(list(SUBTYPE_WEIGHTS), size=count, p=list(SUBTYPE_WEIGHTS.values()))
    for subtype in subtypes:
        if subtype in (EDH, SDH):
            lesion = _extra_axial(rng, head, subtype)
        elif subtype == IPH:
            lesion = _intraparenchymal(rng, head, tissues)
        elif subtype == IVH:
            lesion = _intraventricular(rng, head, tissues)
        else:
            lesion = _subarachnoid(rng, head, tissues)
        if lesion is None:
            continue
        box, mask = lesion
        label[box][mask] = subtype
        blood_hu.append((box, mask, rng.uniform(*HU_RANGES["blood"])))

    lut = np.zeros(len(TISSUES), np.float32)
    for name, code in TISSUES.items():
        if name not in ("skull", "ventricle"):
            lut[code] = rng.uniform(*HU_RANGES[name])
    lut[VENTRICLE] = lut[CSF]
    hu = lut[tissues]
    hu[tissues == SKULL] = _skull_hu(rng, head, tissues)
    for box, mask, mean in blood_hu:
        x, y, z = head.coords(box)
        wave = np.sin(0.25 * x + rng.uniform(0, 6.3)) * np.cos(0.2 * y + 0.3 * z)
        hu[box][mask] = (mean + BLOOD_VARIATION_HU * wave)[mask]

    noise_sd = rng.uniform(3.0, 6.0)
    if not clean:
        # Partial volume: a voxel integrates its footprint, smoothed by the scanner's PSF.
        sigma = [math.sqrt(1 / 12 + (psf / s) ** 2) for psf, s in zip(PSF_SIGMA_MM, spacing,
                                                                        strict=True)]
        hu = ndimage.gaussian_filter(hu, sigma, truncate=3.0)
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, (NOISE_CORRELATION_VOXELS,) * 2 + (0,),
                                        truncate=3.0)
        noise *= noise_sd / max(float(noise.std()), 1e-6)
        hu += noise
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return SyntheticCase(hu=hu, label=label, tissues=tissues,
                         affine=_scanner_affine(rng, shape, spacing))


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
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise UsageError(f"--cases must be a whole number of at least 1, got {cases!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a whole number of at least 0, got {seed!r}.")
    shape, spacing = resolve_geometry(shape, spacing)
    for path in (out, out / "images", out / "labels", out / "dataset.json"):
        if path.exists() and (path.is_dir() == (path.name == "dataset.json")):
            kind = "a folder" if path.is_dir() else "a file"
            raise UsageError(f"{path} is {kind}; synth needs it to be "
                             f"{'a file' if path.name == 'dataset.json' else 'a folder'}.")
    ids = case_ids(cases)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for index, case_id in enumerate(tqdm(ids, desc="synth", unit="case", disable=None)):
        case = make_case(seed, shape, spacing, index=index)
        _save_nifti(case.hu, case.affine, out / "images" / f"{case_id}.nii.gz")
        _save_nifti(case.label, case.affine, out / "labels" / f"{case_id}.nii.gz")
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


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)  # scanner coordinates, as a CT converter writes
    image.header.set_sform(affine, code=1)
    image.header["scl_slope"], image.header["scl_inter"] = 1.0, 0.0
    nib.save(image, path)
