"""Synthetic non-contrast head CT with the five hemorrhage subtypes, for tests and demos.

A case is drawn analytically: every voxel centre is mapped into a head frame (x right, y anterior,
z superior, mm, origin at the head's centre) and the anatomy is a set of nested, slightly
irregular ellipsoid shells (scalp, skull, subarachnoid CSF, cortex over white matter), with
sulci cut where a random smooth field crosses zero, lateral and third ventricles, deep grey
nuclei, the falx and choroid-plexus calcifications, and in the lowest slices the skull base
(cranial fossae, petrous ridges, orbits, sinuses). Hemorrhages are drawn in the places and
shapes they take in real scans. Then comes what the scanner adds: partial-volume blur (voxel
footprint plus point-spread function) and spatially correlated noise of a few HU.

All work is NumPy broadcasting on whole arrays, or on a lesion's bounding box, so a
256 x 256 x 32 case takes a fraction of a second. Case `k` of seed `s` is drawn from
`numpy.random.default_rng([s, k])` alone: the same call gives byte-identical arrays, and a
dataset of 10 cases starts with the 5 cases of a dataset of 5.

One file per part: `tissues` (codes and HU ranges), `head` (the head frame), `anatomy`, `lesions`,
`case` (`make_case` and the scanner), `dataset` (`write_dataset`, `ichseg synth`).
"""

from ichseg.data.layouts import CODES
from ichseg.data.synth.case import DEFAULT_SHAPE, DEFAULT_SPACING, SyntheticCase, make_case
from ichseg.data.synth.dataset import case_ids, resolve_geometry, write_dataset
from ichseg.data.synth.tissues import (
    EDH,
    HU_RANGES,
    INTRACRANIAL,
    IPH,
    IVH,
    LABELS,
    SAH,
    SDH,
    TISSUES,
    intracranial_mask,
)

__all__ = ["CODES", "DEFAULT_SHAPE", "DEFAULT_SPACING", "EDH", "HU_RANGES", "INTRACRANIAL", "IPH",
           "IVH", "LABELS", "SAH", "SDH", "TISSUES", "SyntheticCase", "case_ids",
           "intracranial_mask", "make_case", "resolve_geometry", "write_dataset"]
