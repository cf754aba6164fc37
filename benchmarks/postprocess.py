"""What the postprocessing chosen on validation does to held-out metrics: a demo folder's run
(`python -m ichseg.demo OUT`) chooses on its validation cases, then its held-out cases are
predicted (with mirror TTA, as the demo does) with and without the choice and evaluated.

    python benchmarks/postprocess.py [OUT]    (default: demo)

Prints the candidates' validation scores, then the held-out mean and median of each metric
without and with the chosen postprocessing, and the time each step took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ichseg import api
from ichseg.inference.postprocess import format_choice

SHOWN = ("dice", "hd95", "hd_max", "nsd", "lesion_f1", "volume_error_ml", "pred_ml", "gt_ml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="demo", help="the demo's output folder")
    args = parser.parse_args()
    out = Path(args.out)
    run, test = out / "run", out / "test"

    tick = time.monotonic()
    record = api.postprocess(run, quiet=True)
    seconds = {"choose": time.monotonic() - tick}
    print(format_choice(record))

    reports = {}
    for label, enabled in (("none", False), (record["chosen"]["name"], True)):
        pred = out / "benchmark_postprocess" / ("with" if enabled else "without")
        tick = time.monotonic()
        api.predict(run, [test / "images"], pred, tta=True, postprocess=enabled, quiet=True)
        seconds[f"predict ({label})"] = time.monotonic() - tick
        reports[label] = api.evaluate(pred, test / "labels")

    print(f"\nheld-out cases: {len(next(iter(reports.values()))['cases'])}")
    print(f"{'postprocessing':<32}{'':>7}" + "".join(f"{n:>17}" for n in SHOWN))
    for label, report in reports.items():
        for stat in ("mean", "median"):
            print(f"{label:<32}{stat:>7}" + "".join(
                f"{report[stat][n]:>17.3f}" for n in SHOWN))
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
