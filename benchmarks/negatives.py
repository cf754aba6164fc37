"""False blood on scans without hemorrhage: a demo-like run predicts held-out phantoms with and
without hemorrhage; false-positive mL per negative scan (and where it lies: inside the cranial
cavity or outside it, in the neck, face and scalp), Dice on the positives, with the prediction
clipped to the cranial cavity and without.

    python benchmarks/negatives.py [--run RUN] [--negatives 6] [--positives 6] [--work DIR]
                                   [--minutes 3]

Without `--run`, trains one first as the demo does (`small` preset, 24 phantoms of seed 0 at
the demo's geometry, `--minutes` of training, mirror TTA). The held-out phantoms are the first
`--negatives` cases without hemorrhage and `--positives` with it among seed 2's cases at the
demo's geometry (a phantom's tissue map says where each false voxel lies). Clipping:
- "off": the prediction as made with nothing dropped;
- "on": `predict` with `inference.intracranial_only` when the installed ichseg has it
  (predict_cases(..., intracranial_only=...)), else the "off" prediction clipped to
  `ichseg.data.cavity.find_cavity` when that exists; neither: only "off" is shown.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ichseg import api
from ichseg.data.io import read_label, write_nifti
from ichseg.data.synth import intracranial_mask, make_case
from ichseg.demo import SHAPE, SPACING
from ichseg.evaluation.metrics import dice
from ichseg.inference.predict import predict_cases

HELD_OUT_SEED = 2


def write_held_out(out: Path, negatives: int, positives: int) -> dict[str, np.ndarray]:
    """The first negatives and positives of HELD_OUT_SEED as images/ and labels/; returns each
    case's cranial cavity as drawn."""
    cavities: dict[str, np.ndarray] = {}
    wanted = {False: negatives, True: positives}
    index = 0
    while any(wanted.values()):
        case = make_case(HELD_OUT_SEED, SHAPE, SPACING, index=index)
        positive = bool(case.label.any())
        if wanted[positive]:
            wanted[positive] -= 1
            case_id = f"{'pos' if positive else 'neg'}_{index:03d}"
            write_nifti(out / "images" / f"{case_id}.nii.gz", case.hu, case.affine)
            write_nifti(out / "labels" / f"{case_id}.nii.gz", case.label, case.affine)
            cavities[case_id] = intracranial_mask(case.tissues)
        index += 1
    return cavities


def _predict_clips() -> bool:
    return "intracranial_only" in inspect.signature(predict_cases).parameters


def clipping_modes() -> dict[str, str]:
    """How each clipping mode is made with the installed ichseg."""
    if _predict_clips():
        return {"off": "predict(intracranial_only=False)", "on": "predict(intracranial_only=True)"}
    try:
        from ichseg.data.cavity import find_cavity  # noqa: F401
    except ImportError:
        return {"off": "as predicted"}
    return {"off": "as predicted", "on": "off, clipped to data.cavity.find_cavity"}


def predict_modes(run: Path, images: Path, work: Path) -> dict[str, Path]:
    folders = {mode: work / f"pred_{mode}" for mode in clipping_modes()}
    if _predict_clips():
        for mode, folder in folders.items():
            predict_cases(run, [images], folder, quiet=True, intracranial_only=(mode == "on"))
        return folders
    predict_cases(run, [images], folders["off"], quiet=True)
    if "on" in folders:
        from ichseg.data.cavity import find_cavity
        from ichseg.data.io import read_nifti

        folders["on"].mkdir(parents=True, exist_ok=True)
        for path in sorted(folders["off"].glob("*.nii.gz")):
            labels = read_label(path)
            scan = read_nifti(images / path.name)
            cavity = find_cavity(scan.array, scan.affine).mask
            kept = labels.array if cavity is None else np.where(cavity, labels.array, 0)
            write_nifti(folders["on"] / path.name, kept.astype(labels.array.dtype),
                        labels.affine, like=labels)
    return folders


def score(folder: Path, labels: Path, cavities: dict[str, np.ndarray]) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"fp_ml": [], "fp_inside_ml": [], "fp_outside_ml": [],
                                    "dice": [], "pos_outside_ml": []}
    for path in sorted(folder.glob("*.nii.gz")):
        case_id = path.name.removesuffix(".nii.gz")
        pred = read_label(path)
        gt = read_label(labels / path.name).array > 0
        found = pred.array > 0
        ml = pred.voxel_volume_mm3 / 1000.0
        cavity = cavities[case_id]
        if case_id.startswith("neg"):
            rows["fp_ml"].append(float(found.sum() * ml))
            rows["fp_inside_ml"].append(float((found & cavity).sum() * ml))
            rows["fp_outside_ml"].append(float((found & ~cavity).sum() * ml))
        else:
            rows["dice"].append(dice(found, gt))
            rows["pos_outside_ml"].append(float((found & ~cavity).sum() * ml))
    return rows


def train_demo_like(work: Path, minutes: float) -> Path:
    data, run = work / "data", work / "run"
    api.synthesize(data, 24, seed=0, shape=SHAPE, spacing=SPACING)
    start = time.perf_counter()
    api.train(data, run, mode="new", preset="small", time_limit=f"{minutes:g}m", quiet=True,
              sets=["inference.tta=true"])
    print(f"trained {time.perf_counter() - start:.0f} s")
    return run


def _mean(values: list[float], digits: int) -> str:
    """The mean, or "-" when there is nothing to average (no positives held out)."""
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained run (default: train one)")
    parser.add_argument("--negatives", type=int, default=6)
    parser.add_argument("--positives", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time without --run")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        run = args.run or train_demo_like(work, args.minutes)
        held = work / "held_out"
        cavities = write_held_out(held, args.negatives, args.positives)
        folders = predict_modes(run, held / "images", work)
        results = {mode: score(folder, held / "labels", cavities)
                   for mode, folder in folders.items()}
    modes = clipping_modes()
    print(f"run {run}; {args.negatives} negative and {args.positives} positive held-out phantoms "
          f"(seed {HELD_OUT_SEED}, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} at "
          f"{' x '.join(f'{s:g}' for s in SPACING)} mm)")
    print("| clipping | negatives with >= 1 mL | false mL per negative (mean, max) | "
          "of it inside / outside the cavity (mean mL) | Dice on positives (mean) | "
          "predicted outside the cavity on positives (mean mL) |")
    print("|---|---|---|---|---|---|")
    for mode, rows in results.items():
        fp = rows["fp_ml"]
        print(f"| {mode} ({modes[mode]}) | {sum(v >= 1.0 for v in fp)} of {len(fp)} | "
              f"{statistics.mean(fp):.2f}, {max(fp):.2f} | "
              f"{statistics.mean(rows['fp_inside_ml']):.2f} / "
              f"{statistics.mean(rows['fp_outside_ml']):.2f} | "
              f"{_mean(rows['dice'], 3)} | {_mean(rows['pos_outside_ml'], 2)} |")
    print("per negative, false mL (" + ", ".join(results) + "): " + "; ".join(
        ", ".join(f"{rows['fp_ml'][k]:.2f}" for rows in results.values())
        for k in range(args.negatives)))


if __name__ == "__main__":
    main()
