"""How long finding the cranial cavity takes (`data.cavity.find_cavity`), and what it finds.

    python benchmarks/cavity.py [--repeats 3]

Prints one table, each time the median of `--repeats` runs, on:
- phantoms from the neck up (`make_case(..., neck_share=1)`): 512 x 512 x 36 at 0.45 x 0.45 x
  5 mm (a thick-slice scan at its native pixels) and 256 x 256 x 170 at 0.9 x 0.9 x 1 mm (thin
  slices), with the constructed cavity's volume and the labelled blood left outside;
- the real tilted head CT of tests/data/head_ct_ge_tilted as predict reads it (256 x 306 x 135),
  and the same scan at its pixels doubled back to 512 x 612 x 135 (each pixel repeated: the
  size of the original series, whose 0.49 mm pixels the test data averaged away).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from data import median_seconds  # benchmarks/ is on the path when this runs as a script

from ichseg.data.cavity import find_cavity
from ichseg.data.dicom import find_series, read_series
from ichseg.data.synth import intracranial_mask, make_case

REAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "head_ct_ge_tilted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scans = []
    for seed, shape, spacing in ((1, (512, 512, 36), (0.45, 0.45, 5.0)),
                                 (2, (256, 256, 170), (0.9, 0.9, 1.0))):
        case = make_case(seed, shape, spacing, neck_share=1.0)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        scans.append((f"phantom {'x'.join(map(str, shape))} at {spacing[2]:g} mm", case.hu,
                      case.affine, intracranial_mask(case.tissues).sum() * voxel_ml,
                      case.label > 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = read_series(find_series(REAL)[0])
    scans.append(("real GE, tilted, as read", real.array, real.affine, None, None))
    doubled = real.array.repeat(2, axis=0).repeat(2, axis=1)
    affine = real.affine.copy()
    affine[:3, :2] /= 2.0
    scans.append(("real GE, pixels doubled", doubled, affine, None, None))

    print("| scan | shape | seconds | cavity mL | constructed mL | blood outside (voxels) |")
    print("|---|---|---|---|---|---|")
    for name, hu, affine, truth_ml, blood in scans:
        found = find_cavity(hu, affine)
        seconds = median_seconds(lambda hu=hu, affine=affine: find_cavity(hu, affine),
                                 args.repeats)
        outside = "" if blood is None else int((blood & ~found.mask).sum())
        truth = "" if truth_ml is None else f"{truth_ml:,.0f}"
        print(f"| {name} | {'x'.join(map(str, hu.shape))} | {seconds:.2f} | "
              f"{found.volume_ml(affine):,.0f} | {truth} | {outside} |")


if __name__ == "__main__":
    main()
