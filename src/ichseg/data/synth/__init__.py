"""Synthetic non-contrast head CT with the five hemorrhage subtypes, for tests and demos.

A case is drawn analytically: every drawing point is mapped into a head frame (x right, y
anterior, z superior, mm, origin at the head's centre) and the anatomy is a set of nested,
slightly irregular ellipsoid shells (scalp, skull, subarachnoid CSF, cortex over white matter),
with sulci cut where a random smooth field crosses zero, lateral and third ventricles, deep grey
nuclei, the falx, dural venous sinuses and calcifications (falx, pineal, choroid plexus); in the
lowest slices the skull base (cranial fossae, foramen magnum, petrous ridges, orbits, paranasal
sinuses, mastoids) and, in about half the scans, the neck below it (muscle, fat planes, cervical
spine and canal, airway, carotids and jugulars, the jaw). Hemorrhages are drawn in the places and
shapes they take in real scans; a scalp haematoma, outside the skull, goes into the tissue map and
never into the label; about a quarter of the cases have no hemorrhage. Then comes what the
scanner adds: each slice is the mean of the head across its thickness (planes at most 1 mm
apart), beam-hardening streaks at the skull base, in-plane partial-volume blur (voxel footprint
plus point-spread function) and spatially correlated noise of a few HU.

All work is NumPy broadcasting on whole arrays, on a part's bounding box, or on the list of the
skull base's points. Case `k` of seed `s` is drawn from `numpy.random.default_rng([s, k])`
alone: the same call gives byte-identical arrays, a dataset of 10 cases starts with the 5 cases
of a dataset of 5, and thin and thick scans of one case show the same head.

One file per part: `tissues` (codes, HU ranges, the cranial cavity's codes), `head` (the head
frame), `anatomy` (brain, skull base, dural sinuses), `neck`, `lesions`, `streaks`, `case`
(`make_case` and the scanner), `dataset` (`write_dataset`, `ichseg synth`).
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
