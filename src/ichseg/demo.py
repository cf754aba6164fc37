"""The main job on built-in synthetic data: synth -> train -> status -> predict -> evaluate.

`python -m ichseg.demo [OUT]` (what `make demo` runs). Every step goes through the public API, the
same functions the `ichseg` command calls, so the demo is also the shortest tour of the package.
Run it again after an interruption and training continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ichseg import api
from ichseg.errors import UsageError

# Native scans of 256 x 256 x 32 at 0.9 x 0.9 x 5 mm (a 230 mm field of view): the `small`
# preset resamples them to 2 mm in-plane, which keeps a CPU epoch short.
SHAPE = (256, 256, 32)
SPACING = (0.9, 0.9, 5.0)


def run_demo(out: Path, train_cases: int, test_cases: int, time_limit: str) -> dict:
    started = time.monotonic()
    data, test, run = out / "data", out / "test", out / "run"
    pred, report = out / "predictions", out / "evaluation"

    def step(title: str) -> None:
        print(f"\n== {title} ({time.monotonic() - started:.0f}s) ==", flush=True)

    step(f"1/5 synthesise {train_cases} training and {test_cases} held-out head CTs")
    if not (data / "dataset.json").exists():
        api.synthesize(data, train_cases, seed=0, shape=SHAPE, spacing=SPACING)
    if not (test / "dataset.json").exists():
        api.synthesize(test, test_cases, seed=1, shape=SHAPE, spacing=SPACING)

    step("2/5 train the nnMamba U-Net (`small` preset, checkpoints every epoch)")
    # Mirror test-time augmentation (as nnU-Net predicts by default): four passes per case, a few
    # seconds each here, about one point of Dice on the held-out cases. Set in the run's config,
    # so that the postprocessing chosen at the end of training is chosen on predictions made as
    # predict makes them.
    api.train(data, run, mode="continue", preset="small", time_limit=time_limit,
              sets=["inference.tta=true"])

    step("3/5 status of the run")
    from ichseg.training.status import format_status

    print(format_status(api.check_training_status(run)))

    step(f"4/5 predict the {test_cases} held-out cases")
    api.predict(run, [test / "images"], pred)  # with the run's settings: TTA, postprocessing

    step("5/5 evaluate against their ground truth")
    from ichseg.evaluation.evaluate import format_summary

    summary = api.evaluate(pred, test / "labels", report)
    print(format_summary(summary))

    print(f"\nDone in {time.monotonic() - started:.0f}s. Outputs:")
    for label, path in (("synthetic data", data), ("run folder", run),
                        ("training curves", run / "progress.png"),
                        ("predictions", pred), ("overlays", pred / "overlays"),
                        ("volumes", pred / "volumes.csv"), ("evaluation", report)):
        print(f"  {label:16s} {path}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ichseg.demo", description=__doc__)
    parser.add_argument("out", nargs="?", default="demo", help="output folder (default: demo)")
    parser.add_argument("--train-cases", type=int, default=24)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--time-limit", default="14m",
                        help="training stops cleanly (checkpoint saved) after this long")
    args = parser.parse_args(argv)
    try:
        run_demo(Path(args.out), args.train_cases, args.test_cases, args.time_limit)
    except UsageError as exc:
        print(f"ichseg demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
