"""Thin slices: a 1 mm series taken to the network's 5 mm grid, before (linear interpolation)
and after (area averaging along an axis shrunk more than 1.5x).

    python benchmarks/thin_slices.py [--cases 4] [--train-cases 16] [--minutes 6] [--work DIR]

1. Image: held-out synthetic heads, the 1 mm series taken to 5 mm slices with each method and
   compared with a 5 mm acquisition of the same head, voxel by voxel inside the head (mean
   absolute HU error), against two 5 mm acquisitions:
   - slab: a scanner's 5 mm slice is the mean of the head over its 5 mm (its slice profile):
     the head drawn clean at 0.25 mm slices, averaged over 1 mm slabs (plus 5 HU of noise) for
     the 1 mm series and over 5 mm slabs (plus 5/sqrt(5) HU) for the 5 mm acquisition;
   - synth: `ichseg synth` at 5 mm, which draws each 5 mm slice as the mean of the five 1 mm
     planes across it (its slab), against `ichseg synth` at 1 mm of the same head (each with
     its own noise).
2. Segmentation (skipped with `--minutes 0`): a `small` model trained for `--minutes` on 5 mm
   phantoms predicts the 5 mm and the 1 mm copies of the held-out heads; mean Dice of each
   against its own labels, the 1 mm copies predicted with each method (same model: the 5 mm
   training scans are not shrunk along z, and 1.4375 -> 2 mm in-plane stays linear).
"Before" is the same code with `ct.AREA_ZOOM` set to infinity: no axis is area-averaged.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ichseg.data import ct
from ichseg.data.synth import make_case, resolve_geometry, write_dataset

THIN = (1.4375, 1.4375, 1.0)
THICK = (1.4375, 1.4375, 5.0)
HELD_OUT_SEED = 1


def _methods():
    return {"before (linear)": math.inf, "after (area)": ct.AREA_ZOOM}


def _taken_to_5mm(source: np.ndarray, slices: int) -> dict[str, np.ndarray]:
    shape = (*source.shape[:2], slices)
    taken = {}
    for name, threshold in _methods().items():
        ct.AREA_ZOOM = threshold
        taken[name] = ct.resample(source, shape, order=1, antialias=True)
    ct.AREA_ZOOM = _methods()["after (area)"]
    return taken


def image_errors(cases: int) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    thin_shape, _ = resolve_geometry(None, THIN)
    thick_shape, _ = resolve_geometry(None, THICK)
    zoom = round(THICK[2] / THIN[2])
    errors: dict[str, dict[str, list[float]]] = {
        target: {name: [] for name in _methods()} for target in ("slab", "synth")}
    for index in range(cases):
        # Slab profiles: one head drawn at 0.25 mm slices, averaged over 1 and 5 mm.
        fine_spacing = (*THIN[:2], 0.25)
        fine = make_case(HELD_OUT_SEED, (*thin_shape[:2], 4 * thin_shape[2]), fine_spacing,
                         index=index, clean=True).hu.astype(np.float32)
        thin = fine.reshape(*fine.shape[:2], -1, 4).mean(axis=-1)
        thick = thin.reshape(*thin.shape[:2], -1, zoom).mean(axis=-1)
        thin += rng.normal(0.0, 5.0, thin.shape).astype(np.float32)
        thick += rng.normal(0.0, 5.0 / np.sqrt(zoom), thick.shape).astype(np.float32)
        head = thick > -500
        for name, taken in _taken_to_5mm(thin, thick.shape[2]).items():
            errors["slab"][name].append(float(np.abs(taken - thick)[head].mean()))
        # The generator's own 5 mm: 5 mm slice j is centred at 5j mm, 1 mm slice i at i mm, so
        # 1 mm slices 3.. feed 5 mm slices 1..
        thin = make_case(HELD_OUT_SEED, thin_shape, THIN, index=index).hu.astype(np.float32)
        thick = make_case(HELD_OUT_SEED, thick_shape, THICK, index=index).hu.astype(np.float32)
        count = (thin.shape[2] - 3) // zoom
        target = thick[:, :, 1:1 + count]
        head = target > -500
        for name, taken in _taken_to_5mm(thin[:, :, 3:3 + zoom * count], count).items():
            errors["synth"][name].append(float(np.abs(taken - target)[head].mean()))
    return errors


def segmentation_dice(work: Path, cases: int, train_cases: int, minutes: float
                      ) -> dict[str, float]:
    from ichseg.api import evaluate, predict, train

    train_data = work / "train_5mm"
    write_dataset(train_data, train_cases, seed=0, spacing=THICK)
    held = {"5 mm": work / "held_5mm", "1 mm": work / "held_1mm"}
    write_dataset(held["5 mm"], cases, seed=HELD_OUT_SEED, spacing=THICK)
    write_dataset(held["1 mm"], cases, seed=HELD_OUT_SEED, spacing=THIN)
    run = work / "run"
    start = time.perf_counter()
    train(train_data, run, mode="new", preset="small", time_limit=f"{minutes:g}m",
          epochs=1000, quiet=True)
    print(f"trained {time.perf_counter() - start:.0f} s")
    dice = {}
    for label, folder, threshold in (("5 mm copies", held["5 mm"], ct.AREA_ZOOM),
                                     ("1 mm copies, before (linear)", held["1 mm"], math.inf),
                                     ("1 mm copies, after (area)", held["1 mm"], ct.AREA_ZOOM)):
        ct.AREA_ZOOM = threshold
        out = work / f"pred {label}"
        predict(run, [folder / "images"], out, quiet=True)
        summary = evaluate(out, folder / "labels")
        dice[label] = float(summary["mean"]["dice"])
    ct.AREA_ZOOM = _methods()["after (area)"]
    return dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="held-out heads")
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=6.0, help="0: image part only")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and run here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    errors = image_errors(args.cases)
    print(f"1 mm series taken to 5 mm vs a 5 mm acquisition, {args.cases} held-out heads (mean "
          f"absolute HU error inside the head, per head)")
    print("| 5 mm acquisition | method | per head | mean |")
    print("|---|---|---|---|")
    for target, by_method in errors.items():
        for name, values in by_method.items():
            print(f"| {target} | {name} | {', '.join(f'{v:.1f}' for v in values)} | "
                  f"{statistics.mean(values):.2f} |")
        before, after = (statistics.mean(v) for v in by_method.values())
        print(f"| {target} | after / before | | {after / before:.2f} |")
    if args.minutes <= 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        dice = segmentation_dice(work, args.cases, args.train_cases, args.minutes)
    print(f"\nsmall model, {args.minutes:g} min on {args.train_cases} 5 mm phantoms; mean Dice "
          f"on {args.cases} held-out heads")
    print("| copies | mean Dice |")
    print("|---|---|")
    for label, value in dice.items():
        print(f"| {label} | {value:.3f} |")


if __name__ == "__main__":
    main()
