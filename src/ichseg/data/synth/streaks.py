"""Beam hardening at the skull base: the dense petrous bones harden the beam on the rays between
them, which the reconstruction turns into a dark band across the posterior fossa (the Hounsfield
bar) and bright and dark streaks fanning through the brainstem and cerebellum. A bright streak
on a brain window looks like subarachnoid blood."""

from __future__ import annotations

import math

import numpy as np

from ichseg.data.synth.anatomy import SKULL_BASE_TOP
from ichseg.data.synth.head import Head
from ichseg.data.synth.tissues import intracranial_mask

STREAK_CENTRE = (0.0, -15.0, SKULL_BASE_TOP - 22.0)  # head frame: between the petrous ridges
STREAK_REACH_MM = 9.0  # how far above and below that level the streaks fade out (Gaussian sd)


def add_skull_base_streaks(rng: np.random.Generator, head: Head, tissues: np.ndarray,
                           hu: np.ndarray, apply: bool = True) -> None:
    """Add the streaks to the intracranial HU of the posterior fossa (in the scanner's axial
    planes, as a reconstruction draws them). The draws are made whether or not `apply`, so a
    clean case keeps the random stream of its scanned twin."""
    count = int(rng.integers(2, 6))
    angles = rng.uniform(0.0, math.pi, size=count)
    amplitudes = rng.uniform(12.0, 35.0, size=count) * rng.choice([-1.0, 1.0], size=count)
    widths = rng.uniform(0.8, 2.0, size=count)
    bar = float(rng.uniform(-30.0, -10.0))
    if not apply:
        return
    q = head.rotation @ np.asarray(STREAK_CENTRE) + head.centre  # grid mm
    gx, gy, gz = head.grid  # relative to the head's centre
    dz = gz - (q[2] - head.centre[2])
    planes = np.flatnonzero(np.abs(dz) < 3 * STREAK_REACH_MM)
    if planes.size == 0:
        return
    box = (slice(None), slice(None), slice(int(planes.min()), int(planes.max()) + 1))
    dx = (gx - (q[0] - head.centre[0]))[:, None]
    dy = (gy - (q[1] - head.centre[1]))[None, :]
    pattern = np.zeros((gx.size, gy.size), np.float32)
    for angle, amplitude, width in zip(angles, amplitudes, widths, strict=True):
        distance = np.abs(-math.sin(angle) * dx + math.cos(angle) * dy)
        pattern += amplitude * np.exp(-(distance * (1 / width)) ** 2)
    pattern += bar * np.exp(-(dy * (1 / 6.0)) ** 2) * (np.abs(dx) < 35.0)
    fade = np.exp(-0.5 * (dz[box[2]] * (1 / STREAK_REACH_MM)) ** 2).astype(np.float32)
    where = intracranial_mask(tissues[box]) & (head.p[1][box] < 0)
    hu[box] += np.where(where, pattern[:, :, None] * fade, np.float32(0))
