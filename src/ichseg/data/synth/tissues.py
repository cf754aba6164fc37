"""What a synthetic head is made of: the label codes of its hemorrhages, its tissue classes and
the HU range of each."""

from __future__ import annotations

import numpy as np

from ichseg.data.layouts import CODES

# The contract's label codes by name, as nnU-Net's dataset.json lists them.
LABELS = {name: code for code, name in CODES.items()}
EDH, IPH, IVH, SAH, SDH = (LABELS[name] for name in ("EDH", "IPH", "IVH", "SAH", "SDH"))

# Tissue classes of `SyntheticCase.tissues`: the anatomy drawn, before hemorrhage. Where a lesion
# is, the map keeps the tissue the blood replaced, so tests can ask where each subtype lies.
# Below the skull base and in the face: muscle, vessels, bone of the spine, face and jaw (cortex
# and marrow), the spinal canal; over the skull, a scalp haematoma (extracranial blood, never
# labelled).
TISSUES = {"air": 0, "scalp": 1, "skull": 2, "grey": 3, "white": 4, "csf": 5, "ventricle": 6,
           "edema": 7, "falx": 8, "calcification": 9, "fat": 10, "eye": 11, "muscle": 12,
           "vessel": 13, "venous_sinus": 14, "scalp_haematoma": 15, "bone": 16, "marrow": 17,
           "spinal_canal": 18}
(AIR, SCALP, SKULL, GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION, FAT, EYE, MUSCLE,
 VESSEL, VENOUS_SINUS, SCALP_HAEMATOMA, BONE, MARROW, SPINAL_CANAL) = range(19)
# Where blood can lie: inside the dura, outside the ventricles (IVH is drawn on its own).
EXTRA_AXIAL_SPACE = (GREY, WHITE, CSF, FALX)
# The cranial cavity: everything inside the skull's inner table and above the foramen magnum,
# and nothing else (the face, neck, spinal canal, scalp and bone are all outside it). Every
# labelled hemorrhage lies on these tissues.
INTRACRANIAL = (GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION, VENOUS_SINUS)

# HU ranges, drawn once per case (before blur and noise). Skull values vary across its thickness
# between diploe and the cortical tables. Blood is drawn per lesion.
HU_RANGES = {
    "air": (-1000.0, -1000.0),
    "scalp_skin": (25.0, 45.0),
    "scalp_fat": (-100.0, -60.0),
    "skull_diploe": (700.0, 950.0),
    "skull_table": (1350.0, 1600.0),
    "grey": (35.0, 42.0),
    "white": (24.0, 30.0),
    "csf": (3.0, 10.0),
    "edema": (12.0, 19.0),
    "falx": (45.0, 65.0),
    "calcification": (120.0, 250.0),
    "fat": (-110.0, -70.0),  # orbital fat
    "eye": (5.0, 15.0),  # vitreous
    "muscle": (40.0, 60.0),  # neck, face and temporalis: in the blood band on a brain window
    "vessel": (38.0, 52.0),  # unenhanced blood in the carotid and jugular
    "venous_sinus": (50.0, 65.0),  # dural sinuses: a little denser than brain
    "scalp_haematoma": (50.0, 80.0),
    "bone": (800.0, 1300.0),  # cortical bone of the spine, face and jaw
    "marrow": (200.0, 400.0),  # cancellous bone of the vertebral bodies
    "spinal_canal": (10.0, 30.0),  # cord and the CSF around it
    "blood": (56.0, 84.0),
}
BLOOD_VARIATION_HU = 5.0  # low-frequency clot heterogeneity on top of a lesion's mean


def intracranial_mask(tissues: np.ndarray) -> np.ndarray:
    """The cranial cavity of a tissue map, as drawn (see INTRACRANIAL)."""
    return np.isin(tissues, INTRACRANIAL)
