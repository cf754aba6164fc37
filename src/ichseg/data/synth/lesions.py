"""Hemorrhages of the five subtypes, drawn where and in the shapes they take in real scans."""

from __future__ import annotations

import math

import numpy as np

from ichseg.data.synth.anatomy import SKULL_BASE_TOP
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
    SDH,
    VENTRICLE,
    WHITE,
)

EMPTY_CASE_FRACTION = 0.15
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
    return box, space & (inner > 0) & (inner < thickness * profile)


def intraparenchymal(rng: np.random.Generator, head: Head, tissues: np.ndarray,
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
