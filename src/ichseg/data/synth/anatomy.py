"""The normal anatomy of a synthetic head: tissues from the scalp to the ventricles, the skull
base in the lowest slices, and the HU of each tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichseg.data.synth.head import Head
from ichseg.data.synth.tissues import (
    AIR,
    BONE,
    CALCIFICATION,
    CSF,
    EYE,
    FALX,
    FAT,
    GREY,
    HU_RANGES,
    MUSCLE,
    SCALP,
    SKULL,
    SPINAL_CANAL,
    TISSUES,
    VENOUS_SINUS,
    VENTRICLE,
    WHITE,
)

SKULL_BASE_TOP = -38.0  # mm below the head's centre: the floor of the anterior cranial fossa
ORBITAL_DOME_MM = 6.0  # the anterior fossa's floor rises this much over each orbit
MIDDLE_FOSSA_DROP_MM = 20.0
POSTERIOR_FOSSA_DROP_MM = 14.0  # its floor near the foramen magnum, about 150 mm below the vertex
FLOOR_THICKNESS_MM = 4.0
BASE_THICKNESS_MM = 12.0  # the skull's shell reaches this far below the cranial floor
FORAMEN_MAGNUM_CENTRE, FORAMEN_MAGNUM_RADII = (0.0, -22.0), (14.0, 17.0)  # (x, y), mm
TENTORIUM_APEX = -30.0  # height of the tentorial incisura
SINUS_DEPTH_MM = 6.0  # how far the venous sinuses reach in from the inner table
FALX_CALCIFICATION_SHARE = 0.4


def draw_anatomy(rng: np.random.Generator, head: Head) -> np.ndarray:
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


def cranial_floor(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (head frame, mm) of the cranial floor under (x, y): the anterior fossa, domed over
    each orbit and dipping at the cribriform plate; behind the sphenoid ridges (curving back
    laterally) the middle fossa (temporal lobes) lower; behind the petrous ridges the posterior
    fossa lower still, down to the foramen magnum."""
    ax = np.abs(x)
    return (SKULL_BASE_TOP + ORBITAL_DOME_MM * np.exp(-(((ax - 28.0) * (1 / 14.0)) ** 2))
            - 5.0 * np.exp(-((x * (1 / 5.0)) ** 2))
            - MIDDLE_FOSSA_DROP_MM * _logistic((22.0 - 0.3 * ax - y) * 0.3)
            - POSTERIOR_FOSSA_DROP_MM * _logistic((-12.0 - y) * 0.3))


def tentorium_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the tentorium: highest at the incisura, sloping down to the back and sides to
    the transverse sinuses on the occipital bone."""
    return TENTORIUM_APEX - 0.25 * np.maximum(-15.0 - y, 0.0) - 0.15 * np.abs(x)


def behind_petrous_ridges(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where (x, y) lies behind the petrous ridges: the posterior fossa, under the tentorium."""
    return y < -12.0 - 0.6 * np.maximum(np.abs(x) - 12.0, 0.0)


@dataclass
class SkullBase:
    """The drawing points below the top of the skull base (the domes over the orbits included):
    their indices in the crop, head-frame coordinates, and the cranial floor's height under
    each. Drawing on these lists instead of whole planes skips the brain above."""

    where: tuple[np.ndarray, ...]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    floor: np.ndarray

    def subset(self, mask: np.ndarray) -> SkullBase:
        return SkullBase(tuple(w[mask] for w in self.where), self.x[mask], self.y[mask],
                         self.z[mask], self.floor[mask])


def skull_base_points(head: Head) -> SkullBase:
    where = np.nonzero(head.p[2] < SKULL_BASE_TOP + 8.0)
    x, y, z = (c[where] for c in head.p)
    return SkullBase(where, x, y, z, cranial_floor(x, y))


def draw_skull_base(head: Head, tissues: np.ndarray, base: SkullBase) -> None:
    """The lowest slices: the cranial floor stepping down from the anterior to the middle and
    posterior fossae, a plate of bone with the soft tissue of the skull base and face below it,
    the foramen magnum, the petrous ridges and clivus, the tentorium and the fourth ventricle,
    the orbits and the paranasal sinuses (air in a shell of bone).

    No random draws: it follows the head's size and pose, and leaves the rest of the case's
    random stream as it was.
    """
    top = SKULL_BASE_TOP
    x, y, z = base.x, base.y, base.z
    ax = np.abs(x)
    t = tissues[base.where]
    inside = head.inner[base.where] > 0
    # The brain rests on the floor through a thin layer of CSF, its cortex above that.
    above = z - base.floor
    t[(t == WHITE) & (above < 4.0)] = GREY
    t[np.isin(t, (GREY, WHITE)) & (above < 1.5)] = CSF
    # Below the floor: a plate of bone, then the soft tissue of the skull base and face. The
    # skull's shell stops BASE_THICKNESS_MM below the floor: the face and neck below it have skin,
    # fat and muscle, and bone only where drawn (spine, jaw, sinus walls).
    t[inside & (above < 0)] = SKULL
    t[inside & (above < -FLOOR_THICKNESS_MM)] = MUSCLE
    t[(t == SKULL) & (above < -BASE_THICKNESS_MM)] = MUSCLE
    # Petrous ridges, from the apex beside the clivus back and out to the mastoid, and the
    # clivus itself, between the middle and posterior fossae, sloping down to the foramen.
    petrous = (ax > 12) & (np.abs(y + 2.0 + 0.6 * (ax - 12.0)) < 5.0)
    clivus = (ax < 13) & (np.abs(y - 4.0 + 0.5 * (top - 22.0 - z)) < 6.0)
    t[inside & (petrous | clivus) & (z < top - 14) & (above > -BASE_THICKNESS_MM)] = SKULL
    # The foramen magnum: the floor's opening, where the medulla leaves the cranial cavity.
    fx, fy = FORAMEN_MAGNUM_CENTRE
    rx, ry = FORAMEN_MAGNUM_RADII
    foramen = ((x - fx) * (1 / rx)) ** 2 + ((y - fy) * (1 / ry)) ** 2 < 1
    t[foramen & (above < 0) & (above > -BASE_THICKNESS_MM)
      & (head.depth[base.where] > head.scalp)] = SPINAL_CANAL
    # Tentorium: a dural sheet over the cerebellum, behind the petrous ridges.
    behind_ridges = behind_petrous_ridges(x, y)
    tentorium = np.abs(z - tentorium_height(x, y)) < 0.6
    t[tentorium & behind_ridges & np.isin(t, (GREY, WHITE, CSF))] = FALX
    tissues[base.where] = t

    # Mastoid air cells and the ethmoid labyrinth: air cells in a honeycomb of thin bone.
    def soft(part):
        return np.isin(tissues[part], (MUSCLE, SKULL))

    for centre, radii in (((-50.0, -22.0, top - 24), (8, 10, 10)),
                          ((50.0, -22.0, top - 24), (8, 10, 10)),
                          ((0.0, 50.0, top - 18), (9, 14, 8))):
        part, mask = head.ellipsoid(centre, radii)
        cx, cy, cz = head.coords(part)
        mask &= soft(part)
        cells = np.sin(1.3 * cx) * np.sin(1.3 * cy) * np.sin(1.3 * cz) > -0.2
        tissues[part][mask] = np.where(cells[mask], AIR, BONE)
    # Sinuses and the nasal cavity: air in a shell of bone; the orbits: fat around the globe in
    # a bony cone; the fourth ventricle. Each drawn only where the skull base's soft tissue and
    # bone are, never over the brain.
    for code, centre, radii in (
            (AIR, (0.0, 14.0, top - 32), (11, 9, 9)),  # sphenoid sinus
            (AIR, (0.0, 50.0, top - 30), (6, 22, 12)),  # nasal cavity
            (AIR, (-25.0, 45.0, top - 40), (12, 14, 12)),  # maxillary sinuses
            (AIR, (25.0, 45.0, top - 40), (12, 14, 12)),
            (FAT, (-30.0, 56.0, top - 13), (15, 20, 13)),  # orbits
            (FAT, (30.0, 56.0, top - 13), (15, 20, 13))):
        part, wall = head.ellipsoid(centre, tuple(r + 2.0 for r in radii))
        tissues[part][wall & soft(part)] = BONE
        part, mask = head.ellipsoid(centre, radii)
        tissues[part][mask & np.isin(tissues[part], (MUSCLE, SKULL, BONE))] = code
    # The nasal septum, and the globes in the orbital fat.
    part, mask = head.ellipsoid((0.0, 50.0, top - 30), (1.0, 20, 11))
    tissues[part][mask & (tissues[part] == AIR)] = BONE
    for side in (-1.0, 1.0):
        part, mask = head.ellipsoid((side * 30.0, 62.0, top - 13), (11, 11, 11))
        tissues[part][mask & np.isin(tissues[part], (FAT, MUSCLE, BONE, SKULL))] = EYE
    part, mask = head.ellipsoid((0.0, -30.0, top - 20), (6, 4, 7))
    tissues[part][mask & np.isin(tissues[part], (GREY, WHITE, CSF))] = VENTRICLE
    # The frontal sinus: air in the frontal bone between its tables, above the nose.
    part, mask = head.ellipsoid(head.surface_point(np.array([0.0, 1.0, 0.15]),
                                                   head.scalp + 3.0), (15, 8, 12))
    diploe = (head.depth[part] - head.scalp > 1.5) & (head.inner[part] < -1.5)
    tissues[part][mask & diploe & (tissues[part] == SKULL)] = AIR


def draw_dural_sinuses(rng: np.random.Generator, head: Head, tissues: np.ndarray) -> None:
    """The dural venous sinuses, a little denser than brain against the inner table (superior
    sagittal along the falx's upper edge, transverse along the tentorium's edge, sigmoid down to
    the jugular foramen), and a calcified falx in some cases: classic mimics of hemorrhage."""
    inner = head.inner
    where = np.nonzero((inner > 0) & (inner < SINUS_DEPTH_MM)
                       & np.isin(tissues, (GREY, WHITE, CSF, FALX)))
    px, py, pz = (c[where] for c in head.p)
    inner = inner[where]
    tentorium = tentorium_height(px, py)
    # Superior sagittal sinus: a triangle, its base on the inner table, along the whole arc of
    # the falx from the frontal bone to the torcula.
    width = float(rng.uniform(3.0, 5.0))  # half-width at the inner table
    sagittal = ((np.abs(px) < width * (1.0 - inner * (1.0 / SINUS_DEPTH_MM))) & (pz > tentorium)
                & (pz > SKULL_BASE_TOP + 10))
    # Transverse sinuses on the tentorium's edge at the occipital bone, then sigmoid sinuses
    # curving down to the jugular foramen at the floor of the posterior fossa.
    transverse = (np.abs(pz - tentorium) < 3.5) & (py < -20.0)
    sigmoid = (np.abs(px) > 35.0) & (py < -10.0) & (py > -40.0) & (pz < tentorium + 2.0)
    sinus = sagittal | transverse | sigmoid
    tissues[tuple(w[sinus] for w in where)] = VENOUS_SINUS
    # Falx calcification: a few plaques on the falx, more common with age.
    if rng.random() < FALX_CALCIFICATION_SHARE:
        for _ in range(int(rng.integers(1, 4))):
            centre = (0.0, float(rng.uniform(-50, 40)), float(rng.uniform(0, 50)))
            part, mask = head.ellipsoid(centre, (1.5, float(rng.uniform(3, 8)),
                                                 float(rng.uniform(2, 5))))
            tissues[part][mask & (tissues[part] == FALX)] = CALCIFICATION


def tissue_hu(rng: np.random.Generator, head: Head, tissues: np.ndarray) -> np.ndarray:
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
