"""The head frame of a synthetic case: its size, pose and the depth of every voxel below the
scalp and the skull's inner table, over the voxels of the head's bounding box."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LOWER_HEAD_STRETCH = 1.6


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
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


class Head:
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
        self.rotation = rotation_matrix(math.radians(rng.uniform(-14, 14)),
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
