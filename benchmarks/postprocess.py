"""What the postprocessing chosen on validation does to held-out metrics: a demo folder's run
(`python -m ichseg.demo OUT`) chooses on its validation cases, then its held-out cases are
predicted once as the run predicts (its `inference.tta`), without postprocessing, and every
candidate is applied to those label maps and evaluated, the chosen one marked.

    python benchmarks/postprocess.py [OUT]    (default: demo)
    python benchmarks/postprocess.py OUT --more-cases 30   (and 30 more held-out cases, seed 2)
    python benchmarks/postprocess.py OUT --runs F0 F1 F2 F3 F4   (fold runs on OUT's data: they
        choose together on all their validation cases, and their ensemble predicts)

Prints the candidates' validation scores, then each candidate's held-out mean (and the median of
none and the chosen one) of each metric, and the time each step took. The demo holds out 6
cases, all with hemorrhage; `--more-cases N` adds a second table on N more synthetic cases of
the demo's geometry (seed 2; like the training set, some of them without hemorrhage).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ichseg import api
from ichseg.data.io import read_label, write_nifti
from ichseg.demo import SHAPE, SPACING
from ichseg.inference.postprocess import CANDIDATES, format_choice

SHOWN = ("dice", "hd95", "hd_max", "nsd", "lesion_f1", "volume_error_ml", "pred_ml", "gt_ml")


def apply_to_folder(candidate, raw: Path, out: Path) -> None:
    """The candidate applied to every label map of `raw`, written with the same header to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(raw.glob("*.nii.gz")):
        labels = read_label(path)
        write_nifti(out / path.name, candidate.apply(labels.array, labels.voxel_volume_mm3),
                    labels.affine, like=labels)


def held_out(runs: list[Path], test: Path, work: Path, chosen: str,
             seconds: dict[str, float]) -> None:
    """Predict the held-out cases of `test` once (the runs' ensemble when several), apply every
    candidate, print the table."""
    tick = time.monotonic()
    api.predict(runs, [test / "images"], work / "raw", postprocess=False, quiet=True)
    seconds[f"predict {test.name}"] = time.monotonic() - tick
    tick = time.monotonic()
    reports = {}
    for i, candidate in enumerate(CANDIDATES):
        apply_to_folder(candidate, work / "raw", work / f"candidate{i}")
        reports[candidate.name] = api.evaluate(work / f"candidate{i}", test / "labels")
    seconds[f"apply and evaluate {test.name}"] = time.monotonic() - tick

    empty = sum(1 for case in reports["none"]["cases"] if case["gt_ml"] == 0)
    print(f"\nheld-out cases in {test}: {len(reports['none']['cases'])}, {empty} without "
          f"hemorrhage")
    print(f"{'postprocessing':<32}{'':>7}" + "".join(f"{n:>17}" for n in SHOWN))
    for label, report in reports.items():
        for stat in ("mean", "median") if label in ("none", chosen) else ("mean",):
            mark = " *" if label == chosen else ""
            print(f"{label + mark:<32}{stat:>7}" + "".join(
                f"{report[stat][n]:>17.3f}" for n in SHOWN))
    print("(* chosen on the validation cases)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="demo", help="the demo's output folder")
    parser.add_argument("--runs", type=Path, nargs="+",
                        help="fold runs that choose together (default: OUT/run alone)")
    parser.add_argument("--more-cases", type=int, default=0,
                        help="also held out: this many more synthetic cases (seed 2)")
    args = parser.parse_args()
    out = Path(args.out)
    runs, test = args.runs or [out / "run"], out / "test"
    work = out / ("benchmark_postprocess" + ("_folds" if args.runs else ""))

    tick = time.monotonic()
    record = api.postprocess(runs, quiet=True)
    seconds = {"choose": time.monotonic() - tick}
    print(format_choice(record))

    more = [out / f"more_test{args.more_cases}"] if args.more_cases else []
    for cases in [test, *more]:
        if not (cases / "dataset.json").exists():
            api.synthesize(cases, args.more_cases, seed=2, shape=SHAPE, spacing=SPACING)
        held_out(runs, cases, work / cases.name, record["chosen"]["name"], seconds)
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
