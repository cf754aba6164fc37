"""What the postprocessing chosen on validation does to held-out metrics: a demo folder's run
(`python -m ichseg.demo OUT`) chooses on its validation cases, then its held-out cases are
predicted once as the run predicts (its `inference.tta`), without postprocessing, and every
candidate is applied to those label maps and evaluated, the chosen one marked.

    python benchmarks/postprocess.py [OUT]    (default: demo)

Prints the candidates' validation scores, then each candidate's held-out mean (and the median of
none and the chosen one) of each metric, and the time each step took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg import api
from ichseg.inference.postprocess import CANDIDATES, format_choice

SHOWN = ("dice", "hd95", "hd_max", "nsd", "lesion_f1", "volume_error_ml", "pred_ml", "gt_ml")


def apply_to_folder(candidate, raw: Path, out: Path) -> None:
    """The candidate applied to every label map of `raw`, written with the same header to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(raw.glob("*.nii.gz")):
        image = nib.load(path)
        labels = np.asarray(image.dataobj)
        kept = candidate.apply(labels, float(abs(np.linalg.det(image.affine[:3, :3]))))
        nib.save(nib.Nifti1Image(kept.astype(labels.dtype), image.affine, image.header),
                 out / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="demo", help="the demo's output folder")
    args = parser.parse_args()
    out = Path(args.out)
    run, test, work = out / "run", out / "test", out / "benchmark_postprocess"

    tick = time.monotonic()
    record = api.postprocess(run, quiet=True)
    seconds = {"choose": time.monotonic() - tick}
    print(format_choice(record))

    tick = time.monotonic()
    api.predict(run, [test / "images"], work / "raw", postprocess=False, quiet=True)
    seconds["predict"] = time.monotonic() - tick
    tick = time.monotonic()
    reports = {}
    for i, candidate in enumerate(CANDIDATES):
        apply_to_folder(candidate, work / "raw", work / f"candidate{i}")
        reports[candidate.name] = api.evaluate(work / f"candidate{i}", test / "labels")
    seconds["apply and evaluate"] = time.monotonic() - tick

    chosen = record["chosen"]["name"]
    print(f"\nheld-out cases: {len(reports['none']['cases'])}")
    print(f"{'postprocessing':<32}{'':>7}" + "".join(f"{n:>17}" for n in SHOWN))
    for label, report in reports.items():
        for stat in ("mean", "median") if label in ("none", chosen) else ("mean",):
            mark = " *" if label == chosen else ""
            print(f"{label + mark:<32}{stat:>7}" + "".join(
                f"{report[stat][n]:>17.3f}" for n in SHOWN))
    print("(* chosen on the validation cases)")
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
