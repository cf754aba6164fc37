"""The normal anatomy of a synthetic head: tissues from the scalp to the ventricles, the skull
base in the lowest slices, and the HU of each tissue."""

from __future__ import annotations

import math

import numpy as np

from ichseg.data.synth.head import Head
from ichseg.data.synth.tissues import (
    AIR,
    CALCIFICATION,
    CSF,
    EYE,
    FALX,
    FAT,
    GREY,
    HU_RANGES,
    SCALP,
    SKULL,
    TISSUES,
    VENTRICLE,
    WHITE,
)

SKULL_BASE_TOP = -38.0  # mm below the head's centre: the floor of the anterior cranial fossa
FLOOR_THICKNESS_MM = 4.0


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


def draw_skull_base(head: Head, tissues: np.ndarray) -> None:
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
