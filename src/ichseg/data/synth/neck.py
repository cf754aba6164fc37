"""What lies outside the skull and looks like blood on a brain window: the neck below the skull
base (muscle with fat planes, the cervical spine and spinal canal, the airway, carotids and
jugulars, the rami of the jaw) and the temporalis muscle over the temporal bone."""

from __future__ import annotations

import numpy as np

from ichseg.data.synth.anatomy import (
    BASE_THICKNESS_MM,
    FORAMEN_MAGNUM_CENTRE,
    SKULL_BASE_TOP,
    SkullBase,
)
from ichseg.data.synth.head import Head
from ichseg.data.synth.tissues import (
    AIR,
    BONE,
    FAT,
    MARROW,
    MUSCLE,
    SCALP,
    SKULL,
    SPINAL_CANAL,
    VESSEL,
)

SUBCUTANEOUS_FAT_MM = 3.0  # under the skin of the neck, inside the scalp's layers
FAT_PLANE_MM = 0.6  # half-width of the fat planes between the neck muscles
JAW_TOP = SKULL_BASE_TOP - 24.0  # the jaw's condyles, at the temporomandibular joints


def _ellipse(x: np.ndarray, y: np.ndarray, centre: tuple[float, float],
             radii: tuple[float, float]) -> np.ndarray:
    """Normalised radius of the in-plane ellipse: < 1 inside."""
    return np.sqrt(((x - centre[0]) * (1 / radii[0])) ** 2 + ((y - centre[1]) * (1 / radii[1])) ** 2)


def draw_neck(rng: np.random.Generator, head: Head, tissues: np.ndarray, base: SkullBase) -> None:
    """Below the skull base: the soft tissue left by draw_skull_base becomes the neck."""
    field, gradient = head.random_field(rng, wavelength=float(rng.uniform(45, 60)), waves=4)
    below_floor = base.subset((base.z < base.floor) & (head.depth[base.where] > head.scalp))
    # The spinal canal under the foramen magnum, down to the scan's end.
    canal_centre = FORAMEN_MAGNUM_CENTRE[0], FORAMEN_MAGNUM_CENTRE[1] + 2.0
    canal = _ellipse(below_floor.x, below_floor.y, canal_centre, (8.0, 7.0)) < 1
    tissues[tuple(w[canal] for w in below_floor.where)] = SPINAL_CANAL

    neck = below_floor.subset(below_floor.z < below_floor.floor - BASE_THICKNESS_MM)
    x, y, z, where = neck.x, neck.y, neck.z, neck.where
    depth = head.depth[where]
    top_of_neck = neck.floor - BASE_THICKNESS_MM
    t = tissues[where]
    soft = t == MUSCLE
    # Fat: under the skin, and in planes between the muscles.
    t[soft & (depth < head.scalp + SUBCUTANEOUS_FAT_MM)] = FAT
    t[soft & (np.abs(field[where]) * (1.0 / gradient) < FAT_PLANE_MM)] = FAT
    # Whatever is left of the skull's shell in the neck (the occiput's lower rim) stays bone.
    t[t == SKULL] = BONE
    # The arches of the vertebrae around the canal, with the spinous process behind.
    canal = _ellipse(x, y, canal_centre, (8.0, 7.0))
    t[(canal >= 1) & (canal < 1.5)] = BONE
    t[(np.abs(x) < 3.0) & (y < canal_centre[1] - 7.0) & (y > canal_centre[1] - 24.0)] = BONE
    # Vertebral bodies (C2 and below) in front of the canal, the dens rising into the ring of C1;
    # lateral masses either side: marrow inside a cortex.
    body = _ellipse(x, y, (0.0, -3.0), (10.0, 8.0))
    dens = _ellipse(x, y, (0.0, -5.0), (5.0, 5.0))
    below_c1 = z < top_of_neck - 8.0
    t[((body < 1) & below_c1) | (dens < 1)] = BONE
    t[((body < 0.75) & below_c1) | (dens < 0.7)] = MARROW
    for side in (-1.0, 1.0):
        mass = _ellipse(x, y, (side * 17.0, -9.0), (6.0, 6.0))
        t[mass < 1] = BONE
        t[mass < 0.7] = MARROW
        # Carotid artery and internal jugular vein beside the spine; the jaw's ramus in front.
        t[_ellipse(x, y, (side * 17.0, 12.0), (3.2, 3.2)) < 1] = VESSEL
        t[_ellipse(x, y, (side * 25.0, 3.0), (5.5, 4.5)) < 1] = VESSEL
        t[(_ellipse(x, y, (side * 42.0, 22.0), (4.0, 11.0)) < 1) & (z < JAW_TOP)] = BONE
    # The airway: the nasopharynx behind the nasal cavity, then the oropharynx.
    t[_ellipse(x, y, (0.0, 20.0), (10.0, 6.0)) < 1] = AIR
    tissues[where] = t


def draw_temporalis(head: Head, tissues: np.ndarray) -> None:
    """The temporalis muscle over the temporal squama, under the scalp's galea: a lens of
    muscle outside the skull, thickest in the temporal fossa (a classic mimic of an EDH)."""
    for side in (-1.0, 1.0):
        u = np.array([side * 0.95, 0.2, -0.25])
        u /= np.linalg.norm(u)
        centre = head.surface_point(u, head.scalp)
        box = head.box(centre, 55.0)
        x, y, z = head.coords(box)
        cos_a = (x * u[0] + y * u[1] + z * u[2]) / head.radius[box]
        weight = np.clip((cos_a - 0.8) * (1 / 0.2), 0.0, 1.0)  # 1 at the centre, 0 at 37 degrees
        depth = head.depth[box]
        muscle = (depth > 0.6 * head.scalp) & (depth < head.scalp + 2.5 * weight) & (weight > 0)
        tissues[box][muscle & np.isin(tissues[box], (SKULL, SCALP))] = MUSCLE
