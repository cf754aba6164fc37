"""Which augmentations help: the demo's recipe trained with sets of transforms switched on or off.

    python benchmarks/augmentation.py [--work DIR] [--epochs 24] [--variants all,classic]

The demo's data (24 synthetic training heads, 6 held out, 256 x 256 x 32 at 0.9 x 0.9 x 5 mm),
the `small` preset with mirror test-time augmentation, trained for a fixed number of epochs
(not the demo's time limit: the machine may be shared, and epochs make the runs comparable), once
per variant of `data.augmentations`; each model predicts the held-out heads, and the table gives
their Dice against the ground truth. Every variant draws the same patches, and each transform the
same random numbers (one stream per transform): only the switched transforms differ. One training
per variant, so differences of about 0.01 Dice are within a run's own spread.

Variants: all (every transform, the default), classic (without the three that nnU-Net's set added:
blur, low_resolution, inverted_gamma), and all but one named transform as `no_NAME`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ichseg import api
from ichseg.config import AUGMENTATIONS
from ichseg.demo import SHAPE, SPACING

ADDED = ("blur", "low_resolution", "inverted_gamma")


def transforms_of(variant: str) -> list[str]:
    if variant == "all":
        return list(AUGMENTATIONS)
    if variant == "classic":
        return [name for name in AUGMENTATIONS if name not in ADDED]
    if variant.startswith("no_") and variant[3:] in AUGMENTATIONS:
        return [name for name in AUGMENTATIONS if name != variant[3:]]
    raise SystemExit(f"unknown variant {variant!r}: all, classic or no_NAME with NAME one of "
                     f"{', '.join(AUGMENTATIONS)}")


def run_variant(work: Path, variant: str, epochs: int) -> dict:
    run, pred = work / f"run_{variant}", work / f"predictions_{variant}"
    started = time.monotonic()
    api.train(work / "data", run, mode="continue", preset="small", epochs=epochs, quiet=True,
              sets=["inference.tta=true",
                    f"data.augmentations=[{', '.join(transforms_of(variant))}]"])
    minutes = (time.monotonic() - started) / 60
    api.predict(run, [work / "test" / "images"], pred)
    summary = api.evaluate(pred, work / "test" / "labels", work / f"evaluation_{variant}")
    return {"variant": variant, "minutes": minutes, **summary["mean"],
            "median_dice": summary["median"]["dice"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder kept between runs (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--variants", default="all,classic")
    args = parser.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        transforms_of(variant)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if not (work / "data" / "dataset.json").exists():
            api.synthesize(work / "data", 24, seed=0, shape=SHAPE, spacing=SPACING)
        if not (work / "test" / "dataset.json").exists():
            api.synthesize(work / "test", 6, seed=1, shape=SHAPE, spacing=SPACING)
        rows = []
        for variant in variants:
            rows.append(run_variant(work, variant, args.epochs))
            print(f"{variant}: held-out mean Dice {rows[-1]['dice']:.4f}", flush=True)
    print(f"`small` preset, up to {args.epochs} epochs, 24 training / 6 held-out phantoms, TTA")
    print("| variant | transforms off | mean Dice | median Dice | lesion F1 | HD95 mm | "
          "training min |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        off = sorted(set(AUGMENTATIONS) - set(transforms_of(row["variant"])))
        print(f"| {row['variant']} | {', '.join(off) or '-'} | {row['dice']:.4f} | "
              f"{row['median_dice']:.4f} | {row['lesion_f1']:.3f} | {row['hd95']:.1f} | "
              f"{row['minutes']:.1f} |")


if __name__ == "__main__":
    main()
