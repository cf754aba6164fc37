"""One synthetic case: its anatomy, hemorrhages and HU, then what the scanner adds (blur, noise,
a tilted affine)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichseg.data.synth.anatomy import (
    draw_anatomy,
    draw_dural_sinuses,
    draw_skull_base,
    skull_base_points,
    tissue_hu,
)
from ichseg.data.synth.head import NECK_SHARE, Head, rotation_matrix
from ichseg.data.synth.lesions import (
    EMPTY_CASE_FRACTION,
    SCALP_HAEMATOMA_SHARE,
    SUBTYPE_WEIGHTS,
    Lesion,
    extra_axial,
    intraparenchymal,
    intraventricular,
    scalp_haematoma,
    subarachnoid,
)
from ichseg.data.synth.neck import draw_neck, draw_temporalis
from ichseg.data.synth.streaks import add_skull_base_streaks
from ichseg.data.synth.tissues import BLOOD_VARIATION_HU, EDH, HU_RANGES, IPH, IVH, SDH

DEFAULT_SHAPE = (512, 512, 32)
DEFAULT_SPACING = (0.45, 0.45, 5.0)
# Scanner point-spread function (Gaussian sigma, mm): in-plane the partial-volume blur is the
# voxel footprint (a box of one voxel, sigma = width / sqrt(12)) combined with this PSF; along z
# the footprint is the slab's mean (make_case), the PSF alone is left.
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


def make_case(seed: int, shape: Sequence[int] = DEFAULT_SHAPE,
              spacing: Sequence[float] = DEFAULT_SPACING, index: int = 0,
              clean: bool = False, neck_share: float = NECK_SHARE) -> SyntheticCase:
    """Draw case `index` of `seed`: a head CT with 0 to 4 hemorrhages of the five subtypes.

    `clean=True` leaves out the scanner's blur, noise and streaks (tests check the drawn HU
    values). `neck_share`: the chance that the scan starts in the neck rather than just below
    the skull base (0: never, 1: always).

    Each slice is the mean of the head across its thickness (drawn as planes SLAB_STEP_MM
    apart); its label and tissue are the most common across the slab (ties go to the plane
    nearest the slice's centre), the tissue among the planes that carry that label. Thin and
    thick scans of one seed and index draw the same head: a 5 mm slice is the mean of the five
    1 mm slices across it, and labelled where most of them are.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng([int(seed), int(index)])
    head = Head(rng, shape, spacing, neck_share=neck_share)
    tissues = draw_anatomy(rng, head)
    base = skull_base_points(head)
    draw_skull_base(head, tissues, base)
    draw_neck(rng, head, tissues, base)
    del base  # its point lists are as large as the skull base: free them before the HU
    draw_temporalis(head, tissues)
    draw_dural_sinuses(rng, head, tissues)
    if rng.random() < SCALP_HAEMATOMA_SHARE:
        scalp_haematoma(rng, head, tissues)
    label = np.zeros(head.shape, np.uint8)
    lesions: list[Lesion] = []
    count = 0 if rng.random() < EMPTY_CASE_FRACTION else int(rng.integers(1, 5))
    subtypes = rng.choice(list(SUBTYPE_WEIGHTS), size=count, p=list(SUBTYPE_WEIGHTS.values()))
    for subtype in subtypes:
        if subtype in (EDH, SDH):
            lesion = extra_axial(rng, head, tissues, subtype)
        elif subtype == IPH:
            lesion = intraparenchymal(rng, head, tissues, label)
        elif subtype == IVH:
            lesion = intraventricular(rng, head, tissues)
        else:
            lesion = subarachnoid(rng, head, tissues)
        if lesion is not None and lesion[1].any():
            label[lesion[0]][lesion[1]] = subtype
            lesions.append(lesion)

    hu = tissue_hu(rng, head, tissues)
    for box, mask in lesions:
        # Each clot has its own density, with a gentle internal variation.
        x, y, z = head.coords(box)
        wave = np.sin(0.25 * x + float(rng.uniform(0, 6.3))) * np.cos(0.2 * y + 0.3 * z)
        mean = float(rng.uniform(*HU_RANGES["blood"]))
        hu[box][mask] = (mean + BLOOD_VARIATION_HU * wave)[mask]
    add_skull_base_streaks(rng, head, tissues, hu, apply=not clean)
    # Drawn before the noise, whose size depends on the grid: thin and thick copies share it.
    affine = scanner_affine(rng, shape, spacing)

    n = head.sub_planes
    hu = slab_mean(hu, n)
    slab_label = slab_mode(label, n)
    tissues = slab_mode(tissues, n, counted=label == np.repeat(slab_label, n, axis=2))
    label = slab_label
    if not clean:
        hu = scan(rng, hu, spacing)
    out_hu = np.full(shape, HU_RANGES["air"][0], np.int16)
    out_hu[head.crop] = np.clip(np.rint(hu), -1024, 3071)
    out_tissues = np.zeros(shape, np.uint8)
    out_tissues[head.crop] = tissues
    out_label = np.zeros(shape, np.uint8)
    out_label[head.crop] = label
    return SyntheticCase(hu=out_hu, label=out_label, tissues=out_tissues, affine=affine)


def slab_mean(planes: np.ndarray, n: int) -> np.ndarray:
    """Each slice's mean over its `n` drawing planes (X, Y, Z * n) -> (X, Y, Z)."""
    if n == 1:
        return planes
    return planes.reshape(*planes.shape[:2], -1, n).mean(axis=-1, dtype=np.float32)


def _centre_out(n: int) -> list[int]:
    """The planes of a slab from its centre outward: the order in which ties are broken."""
    return sorted(range(n), key=lambda k: (abs(2 * k - (n - 1)), k))


def slab_mode(planes: np.ndarray, n: int, counted: np.ndarray | None = None) -> np.ndarray:
    """Each slice's most common code over its `n` planes, ties to the plane nearest its centre.

    `counted` (boolean, like `planes`) limits the vote to some planes of each slab; a slab with
    none counted keeps its centre plane's code. Only slabs whose planes differ are voted on.
    """
    if n == 1:
        return planes
    slab = planes.reshape(*planes.shape[:2], -1, n)
    order = _centre_out(n)
    best = slab[..., order[0]].copy()
    mixed = np.nonzero((slab != slab[..., :1]).any(axis=-1))
    votes = slab[mixed]  # (voxels, n)
    allowed = (np.ones(votes.shape, bool) if counted is None
               else counted.reshape(slab.shape)[mixed])
    winner = votes[:, order[0]].copy()
    best_count = np.zeros(len(votes), np.int16)
    for k in order:
        count = ((votes == votes[:, k:k + 1]) & allowed).sum(axis=1, dtype=np.int16)
        count *= allowed[:, k]
        better = count > best_count
        winner[better] = votes[better, k]
        best_count[better] = count[better]
    best[mixed] = winner
    return best


def scan(rng: np.random.Generator, hu: np.ndarray, spacing: tuple[float, float, float]
          ) -> np.ndarray:
    """What the scanner adds: partial-volume blur and correlated noise of a few HU.

    In-plane a voxel integrates its footprint (a box of one voxel: sigma = 1/sqrt(12) voxels)
    smoothed by the point-spread function; along z the slab's mean has already integrated it. The noise is added before that blur, which correlates it as a
    reconstruction kernel does, scaled up by the kernel's own attenuation so that its standard
    deviation after the blur is the drawn one. Only the head's crop is processed: the air around
    it is uniform.
    """
    noise_sd = float(rng.uniform(*NOISE_SD_HU))
    # Along z the slice's footprint is already in the slab's mean: only the PSF is left.
    footprint = (1 / 12, 1 / 12, 0.0)
    sigma = [math.sqrt(f + (psf / s) ** 2) for f, psf, s in zip(footprint, PSF_SIGMA_MM, spacing,
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


def scanner_affine(rng: np.random.Generator, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel -> RAS mm: axes along R, A, S with a gantry tilt, centred near the isocentre."""
    tilt = math.radians(rng.uniform(-12, 12))
    rotation = rotation_matrix(math.radians(rng.uniform(-2, 2)), tilt, 0.0)
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    centre_voxel = (np.asarray(shape) - 1) / 2
    table = np.array([rng.uniform(-5, 5), rng.uniform(-20, 20), rng.uniform(-60, 60)])
    affine[:3, 3] = table - affine[:3, :3] @ centre_voxel
    return affine
