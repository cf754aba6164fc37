"""Hemorrhages of the five subtypes, drawn where and in the shapes they take in real scans."""

from __future__ import annotations

import math

import numpy as np

from ichseg.data.synth.anatomy import (
    ORBITAL_DOME_MM,
    SKULL_BASE_TOP,
    behind_petrous_ridges,
    tentorium_height,
)
from ichseg.data.synth.head import Head
from ichseg.data.synth.tissues import (
    CSF,
    EDEMA,
    EDH,
    EXTRA_AXIAL_SPACE,
    GREY,
    IPH,
    IVH,
    SAH,
    SCALP,
    SCALP_HAEMATOMA,
    SDH,
    VENTRICLE,
    WHITE,
)

EMPTY_CASE_FRACTION = 0.25  # cases without hemorrhage, as real datasets have
SCALP_HAEMATOMA_SHARE = 0.3  # cases with blood outside the skull (labelled background)
IPH_CENTRE_TRIES = 32
SUBTYPE_WEIGHTS = {EDH: 0.13, IPH: 0.27, IVH: 0.15, SAH: 0.23, SDH: 0.22}


def _direction_on_convexity(rng: np.random.Generator) -> np.ndarray:
    """A direction from the head's centre to its lateral or upper convexity."""
    side = rng.choice([-1.0, 1.0])
    u = np.array([side * rng.uniform(0.6, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-0.1, 0.7)])
    return u / np.linalg.norm(u)


Lesion = tuple[tuple[slice, slice, slice], np.ndarray]  # bounding box in the crop, mask in it


def extra_axial(rng: np.random.Generator, head: Head, tissues: np.ndarray,
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
    # Over the convexity the tentorium bounds it: none runs on under the tentorium into the
    # posterior fossa, down to the foramen magnum.
    supratentorial = ~behind_petrous_ridges(x, y) | (z > tentorium_height(x, y))
    return box, space & supratentorial & (inner > 0) & (inner < thickness * profile)


def intraparenchymal(rng: np.random.Generator, head: Head, tissues: np.ndarray,
                      label: np.ndarray) -> Lesion | None:
    """A lobulated blob in grey or white matter with an oedema rim; None if there is no room."""
    radius = float(rng.uniform(4, 18))
    # Stretch and lobulation reach up to twice the radius: keep the clot inside the brain, off
    # the midline. The centre is drawn in the head frame, not among voxels, so that thin and
    # thick reconstructions of one case draw the same clot.
    tries = rng.uniform(-1.0, 1.0, size=(IPH_CENTRE_TRIES, 3)) * (head.axes * 0.7)
    fits = ((head.inner_at(tries) > 2 * radius + 6)
            & (tries[:, 2] > SKULL_BASE_TOP + ORBITAL_DOME_MM + 2 * radius + 2)
            & (np.abs(tries[:, 0]) > 6.0))
    if not fits.any():
        return None
    centre = tries[int(np.argmax(fits))]
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


def intraventricular(rng: np.random.Generator, head: Head, tissues: np.ndarray) -> Lesion:
    """Blood layering in the dependent (posterior, patient supine) part of the ventricles."""
    box = head.box(np.array([0.0, -5.0, 0.0]), 55.0)
    x, y, _ = head.coords(box)
    level = float(rng.uniform(-35, 5))  # blood-CSF level along the anterior axis
    side = float(rng.choice([-1.0, 1.0, 0.0]))  # one lateral ventricle, or both
    blood = (tissues[box] == VENTRICLE) & (y < level)
    if side:
        blood &= side * x > 0
    return box, blood


def subarachnoid(rng: np.random.Generator, head: Head, tissues: np.ndarray) -> Lesion:
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


def scalp_haematoma(rng: np.random.Generator, head: Head, tissues: np.ndarray) -> None:
    """A subgaleal haematoma: blood between the galea and the skull, swelling the scalp outward
    over the convexity. Blood outside the skull is not an intracranial hemorrhage: it goes into
    the tissue map (SCALP_HAEMATOMA), never into the label."""
    u0 = _direction_on_convexity(rng)
    # At most 10 mm: the crop reaches 15 % of the head's semi-axes (9 mm or more) and 3 voxels
    # beyond the scalp.
    extent, thickness = math.radians(rng.uniform(20, 40)), float(rng.uniform(4, 10))
    outer = float(np.linalg.norm(head.surface_point(u0, 0.0)))
    box = head.box(u0 * outer, outer * extent + thickness)
    x, y, z = head.coords(box)
    ux, uy, uz = (float(v) for v in u0)
    cos_a = (x * ux + y * uy + z * uz) / head.radius[box]
    angle = np.arccos(np.clip(cos_a, -1.0, 1.0)) * (1.0 / extent)
    swelling = thickness * np.sqrt(np.clip(1.0 - angle * angle, 0.0, None))
    depth = head.depth[box]
    skin = 0.4 * head.scalp  # skin and subcutaneous fat stay over the blood
    region = (swelling > 0) & (depth > -swelling) & (depth < head.scalp)
    tissues[box][region & (depth < skin - swelling)] = SCALP
    tissues[box][region & (depth >= skin - swelling)] = SCALP_HAEMATOMA
