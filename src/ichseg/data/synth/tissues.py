"""What a synthetic head is made of: the label codes of its hemorrhages, its tissue classes and
the HU range of each."""

from __future__ import annotations

from ichseg.data.layouts import CODES

# The contract's label codes by name, as nnU-Net's dataset.json lists them.
LABELS = {name: code for code, name in CODES.items()}
EDH, IPH, IVH, SAH, SDH = (LABELS[name] for name in ("EDH", "IPH", "IVH", "SAH", "SDH"))

# Tissue classes of `SyntheticCase.tissues`: the anatomy drawn, before hemorrhage. Where a lesion
# is, the map keeps the tissue the blood replaced, so tests can ask where each subtype lies.
TISSUES = {"air": 0, "scalp": 1, "skull": 2, "grey": 3, "white": 4, "csf": 5, "ventricle": 6,
           "edema": 7, "falx": 8, "calcification": 9, "fat": 10, "eye": 11}
AIR, SCALP, SKULL, GREY, WHITE, CSF, VENTRICLE, EDEMA, FALX, CALCIFICATION, FAT, EYE = range(12)
# Where blood can lie: inside the dura, outside the ventricles (IVH is drawn on its own).
EXTRA_AXIAL_SPACE = (GREY, WHITE, CSF, FALX)

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
    "blood": (56.0, 84.0),
}
BLOOD_VARIATION_HU = 5.0  # low-frequency clot heterogeneity on top of a lesion's mean
