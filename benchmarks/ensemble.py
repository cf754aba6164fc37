"""What an ensemble costs: `predict_cases` of one folder of scans with 1, 2 and 3 models.

    python benchmarks/ensemble.py [--preset small] [--scans 2] [--repeats 3]

The models are copies of one untrained checkpoint of the preset (the network's time does not
depend on its weights). Each way predicts the same folder of synthetic 512 x 512 x 32 scans
(0.45 x 0.45 x 5 mm) into a fresh folder; the ways alternate in every repetition so that the
machine's load falls on all of them alike. Printed: the median seconds per scan, and the ratio
to one model. Each member runs its own sliding window over every scan; reading the next scan and
writing the previous one still overlap with the networks.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ichseg.config import preset_config
from ichseg.data.synth import write_dataset
from ichseg.inference.predict import predict_cases
from ichseg.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.scans, seed=0, shape=(512, 512, 32),
                      spacing=(0.45, 0.45, 5.0))
        cfg = preset_config(args.preset)
        torch.manual_seed(0)
        state = {"model_state": build_model(cfg).state_dict(), "config": cfg.to_dict()}
        checkpoints = []
        for k in range(max(args.models)):
            checkpoints.append(root / f"model{k}.pt")
            torch.save(state, checkpoints[-1])
        times: dict[int, list[float]] = {n: [] for n in args.models}
        for repeat in range(args.repeats):
            for n in args.models:
                out = root / f"out{n}_{repeat}"
                start = time.perf_counter()
                predict_cases(checkpoints[:n], [root / "data" / "images"], out, quiet=True)
                times[n].append((time.perf_counter() - start) / args.scans)
                shutil.rmtree(out)
    one = statistics.median(times[args.models[0]])
    print(f"preset {args.preset}, {args.scans} scans of 512 x 512 x 32, {args.repeats} repeats")
    print(f"{'models':>7} {'s per scan (median)':>20} {'ratio':>7}")
    for n in args.models:
        median = statistics.median(times[n])
        print(f"{n:>7} {median:>20.2f} {median / one:>7.2f}")


if __name__ == "__main__":
    main()
