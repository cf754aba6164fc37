"""1 mm and 5 mm copies of the same held-out phantoms, predicted by one trained run.

    python benchmarks/thin_copies.py RUN [--cases 6] [--work DIR]

`ichseg synth` draws each 5 mm slice as the mean of the five 1 mm planes across it, so the two
copies are two reconstructions of one head. Both are predicted with the run's settings (its TTA,
cranial-cavity clip and postprocessing) and scored against their own labels; prints each case's
Dice at 5 mm and at 1 mm and the means. Held-out seed 1, 256 x 256 at 0.9 mm, as the demo.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ichseg import api
from ichseg.data.synth import write_dataset

COPIES = {"5 mm": ((256, 256, 32), (0.9, 0.9, 5.0)), "1 mm": ((256, 256, 160), (0.9, 0.9, 1.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="thin_copies_"))
    dice = {}
    for name, (shape, spacing) in COPIES.items():
        data = work / name.replace(" ", "")
        if not (data / "dataset.json").exists():
            write_dataset(data, args.cases, seed=1, shape=shape, spacing=spacing)
        api.predict(args.run, [data / "images"], work / f"pred_{data.name}", quiet=True)
        summary = api.evaluate(work / f"pred_{data.name}", data / "labels", work / f"eval_{data.name}")
        dice[name] = {case["case"]: case["dice"] for case in summary["cases"]}
    print(f"{'case':12s} {'Dice 5 mm':>10s} {'Dice 1 mm':>10s} {'difference':>11s}")
    for case in dice["5 mm"]:
        thick, thin = dice["5 mm"][case], dice["1 mm"][case]
        print(f"{case:12s} {thick:10.3f} {thin:10.3f} {thin - thick:+11.3f}")
    means = {name: sum(d.values()) / len(d) for name, d in dice.items()}
    print(f"{'mean':12s} {means['5 mm']:10.3f} {means['1 mm']:10.3f} "
          f"{means['1 mm'] - means['5 mm']:+11.3f}")


if __name__ == "__main__":
    main()
