"""Data-parallel training through torchrun: seconds per epoch, per process count.

    python benchmarks/ddp.py --preset small --device cuda --nproc 1       # one GPU, NCCL
    python benchmarks/ddp.py --preset tiny --device cpu --nproc 1 2       # CPUs, gloo

Each job is `torchrun --nproc-per-node N -m ichseg train` on a synthetic dataset (made once in
the work folder) for `--epochs` epochs; the first epoch (compilation, cache warm-up) is left out
of the median. Prints a table; the figures and the command go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(data: Path, run: Path, nproc: int, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", "ichseg", "train", "--data", str(data),
               "--run-dir", str(run), "--preset", args.preset, "--device", args.device,
               "--epochs", str(args.epochs), "--patience", "0", "--quiet", "--mode", "new"]
    started = time.monotonic()
    subprocess.run(command, check=True)
    wall = time.monotonic() - started
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(r["epoch_seconds"]) for r in rows][1:] or [float(rows[0]["epoch_seconds"])]
    return {"epoch_s": statistics.median(seconds), "wall_s": wall,
            "train_loss": float(rows[-1]["train_loss"]), "val_dice": float(rows[-1]["val_dice"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "default"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ichseg_ddp_"))
    data = work / "data"
    if not (data / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "ichseg", "synth", str(data), "--cases",
                        str(args.cases)], check=True)
    results = {n: run_job(data, work / f"run_{n}", n, args) for n in args.nproc}
    print(f"\n{args.preset} preset on {args.device}, {args.epochs} epochs, "
          f"median epoch after the first")
    print(f"{'processes':>9} {'s/epoch':>9} {'wall s':>8} {'speed-up':>8} {'train loss':>10} "
          f"{'val Dice':>8}")
    base = results[args.nproc[0]]["epoch_s"]
    for n, r in results.items():
        print(f"{n:>9} {r['epoch_s']:>9.2f} {r['wall_s']:>8.1f} {base / r['epoch_s']:>8.2f} "
              f"{r['train_loss']:>10.4f} {r['val_dice']:>8.4f}")


if __name__ == "__main__":
    main()
