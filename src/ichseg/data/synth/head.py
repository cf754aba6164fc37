"""The head frame of a synthetic case: its size, pose and the depth of every voxel below the
scalp and the skull's inner table, over the voxels of the head's bounding box."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LOWER_HEAD_STRETCH = 1.6
# A thick slice records the mean of the head across its thickness: it is drawn as planes at most
# this far apart (a 5 mm slice as five 1 mm planes, the planes of a 1 mm series of the same head).
SLAB_STEP_MM = 1.0
NECK_SHARE = 0.5  # cases whose scan starts in the neck, below the foramen magnum
NECK_DEPTH_MM = (85.0, 110.0)  # how far below the head's centre those scans start (C1 to C3)
NECK_TOP_FRACTION = 0.78  # of the lower semi-axis: below it the outline is the neck's
MIN_ABOVE_CENTRE_MM = 40.0  # a scan starting in the neck still reaches this far above the centre


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

    `p` holds the head-frame coordinates (mm) of every drawing point in the box `crop` of the full
    grid; `depth` the depth below the scalp, `inner` the depth inside the skull's inner table.
    Everything outside the box is air, so nothing else is computed there.

    A slice thicker than SLAB_STEP_MM is drawn as `sub_planes` thin planes spread evenly across
    its thickness (a 5 mm slice as five planes 1 mm apart), which the scanner then averages: the
    drawing grid is the scan's grid with `sub_planes` times as many planes along z, and `crop`
    (in the scan's voxels) spans `sub_planes` drawing planes per slice.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float], neck_share: float = NECK_SHARE):
        scan_spacing = np.asarray(spacing, dtype=np.float64)
        extent = np.asarray(shape) * scan_spacing
        self.sub_planes = max(1, math.ceil(float(spacing[2]) / SLAB_STEP_MM - 1e-6))
        step = float(spacing[2]) / self.sub_planes
        self.spacing = np.array([spacing[0], spacing[1], step])
        # Drawing plane k of slice i lies at i * spacing + (k - (n - 1) / 2) * step.
        self.origin = np.array([0.0, 0.0, -(self.sub_planes - 1) / 2 * step])
        # Outer semi-axes of the scalp (mm): left-right, front-back, up-down.
        size = rng.uniform(0.93, 1.06)
        self.axes = np.array([rng.uniform(68, 76), rng.uniform(86, 95), 80.0]) * size
        # Below the centre the head narrows much less than an ellipsoid: the skull base and
        # posterior fossa are wide. The lower half uses a longer vertical semi-axis.
        self.lower_axis = float(self.axes[2]) * LOWER_HEAD_STRETCH
        self.neck_top = -NECK_TOP_FRACTION * self.lower_axis  # where the head becomes the neck
        self.rotation = rotation_matrix(math.radians(rng.uniform(-14, 14)),
                                         math.radians(rng.uniform(-8, 8)),
                                         math.radians(rng.uniform(-5, 5)))
        centre = extent / 2 + np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0])
        # Scans run up to the vertex: put it a little below the top slice when the scan is long
        # enough to hold the head down to the posterior fossa, otherwise cover the upper head.
        # A share of scans start lower, in the neck (C1 to C3), as real head CTs often do; a
        # scan too short for both loses some of the vertex, never more than half the head.
        centre[2] = extent[2] - self.axes[2] - rng.uniform(5, 15)
        short_scan_centre = extent[2] / 2 + rng.uniform(-5, 25)  # drawn always: the same stream
        if centre[2] < extent[2] / 2 - 20:
            centre[2] = short_scan_centre
        neck_depth = float(rng.uniform(*NECK_DEPTH_MM))
        if rng.random() < neck_share:
            centre[2] = min(max(centre[2], neck_depth), extent[2] - MIN_ABOVE_CENTRE_MM)
        self.centre = centre
        # The rotated ellipsoid's half-extents along the grid axes (15 % for the outline factor
        # and a scalp swelling), plus a few voxels of air so the blur sees the head's edge.
        bound = np.array([self.axes[0], self.axes[1], self.lower_axis]) * 1.15
        half = np.sqrt(((self.rotation * bound) ** 2).sum(axis=1))
        lo = np.maximum(np.floor((centre - half) / scan_spacing).astype(int) - 3, 0)
        lo[2] = 0  # the neck runs down to the scan's first slice
        hi = np.minimum(np.ceil((centre + half) / scan_spacing).astype(int) + 4, shape)
        self.crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        planes = np.array([1, 1, self.sub_planes])
        self.lo, hi = lo * planes, hi * planes
        self.shape = tuple(int(b - a) for a, b in zip(self.lo, hi, strict=True))
        # Grid coordinates relative to the head's centre (mm), one 1D array per axis.
        self.grid = [(np.arange(a, b) * s + o - c).astype(np.float32)
                     for a, b, s, o, c in zip(self.lo, hi, self.spacing, self.origin, centre,
                                              strict=True)]
        # Head-frame coordinates p = R^T (q - c), built by broadcasting the three axes.
        gx, gy, gz = self.grid[0][:, None, None], self.grid[1][None, :, None], self.grid[2]
        r = [[float(v) for v in row] for row in self.rotation]
        self.p = []
        for a in range(3):  # in place: one array per axis, no temporaries of the crop's size
            axis = np.empty(self.shape, np.float32)
            axis[...] = r[0][a] * gx
            axis += r[1][a] * gy
            axis += r[2][a] * gz
            self.p.append(axis)
        self.scalp = float(rng.uniform(4.0, 6.5))
        self.skull_thickness = float(rng.uniform(5.5, 7.5))
        self.radius, self.depth, self.skull = self._depths(*self.p)
        self.inner = self.depth - self.scalp - self.skull

    def _depths(self, px, py, pz):
        """Distance from the centre, depth below the scalp along the ray from the centre (close
        to the normal distance for a near-spherical head) and the skull's thickness there."""
        # In place where it can be: these run over every drawing point of the crop.
        radius = px * px
        radius += py * py
        radius += pz * pz
        np.sqrt(radius, out=radius)
        radius += 1e-3
        inverse = 1.0 / radius
        u_x, u_y = px * inverse, py * inverse
        del inverse
        ia, ib, ic = (float(1 / a) for a in self.axes)
        norm = np.where(pz > 0, pz * np.float32(ic), pz * np.float32(1 / self.lower_axis))
        norm *= norm
        norm += (px * ia) ** 2
        norm += (py * ib) ** 2
        np.sqrt(norm, out=norm)
        norm *= _outline_factor(u_x, u_y)
        np.maximum(norm, 1e-3, out=norm)
        depth = np.divide(1.0, norm, out=norm)
        depth -= 1.0
        depth *= radius
        neck = np.nonzero(pz < self.neck_top)
        if neck[0].size:
            # The neck: the cross-section at neck_top carried down, depth measured in-plane.
            nx, ny = px[neck], py[neck]
            in_plane = np.sqrt(nx * nx + ny * ny) + 1e-3
            shrink = math.sqrt(1.0 - (self.neck_top / self.lower_axis) ** 2)
            norm = np.sqrt((nx * ia) ** 2 + (ny * ib) ** 2) * np.float32(1 / shrink)
            norm *= _outline_factor(nx / in_plane, ny / in_plane)
            depth[neck] = in_plane * (1.0 / np.maximum(norm, 1e-3) - 1.0)
        # Skull thicker at the occiput and frontal bone than at the temporal squama.
        skull = self.skull_thickness * (1.0 + 0.12 * u_y * u_y - 0.25 * u_x * u_x)
        return radius, depth, skull

    def inner_at(self, points: np.ndarray) -> np.ndarray:
        """Depth inside the inner table of head-frame points (N, 3), independent of the grid."""
        _, depth, skull = self._depths(*np.asarray(points, np.float64).T)
        return depth - self.scalp - skull

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
        """Bounding box, in the crop's drawing points, of a head-frame sphere."""
        q = self.rotation @ centre + self.centre - self.origin
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
