"""Datasets larger than memory and batches prepared ahead (issue 13): three tables.

    python benchmarks/loader.py --work /tmp/i13_bench --cases 6 36 200     # all three parts
    python benchmarks/loader.py --work /tmp/i13_bench --parts wait speed   # some of them

- memory: peak resident memory (the child's ru_maxrss) of `ichseg train` on N synthetic
  512 x 512 x 32 cases at the `default` spacing (0.45 x 0.45 x 5 mm), with the default preset's
  patches and augmentation but a small network (`model.base_width=4`, so the figure is about
  data), 4 steps, one validation case, windows without overlap; the cache is prepared first
  (timed, cold: `prepare` row) and the runs read it. The N cases are the first N of one
  synthetic set of max(N) (seed 0), written once into the work folder.
- wait: the session's DataLoader (`data.loader.training_batches`) over the default preset's
  patches (192 x 192 x 32, batch 2, full augmentation) on 6 of those cases, with a stand-in
  network that takes a fixed 150 ms a step (a sleep: the CPU is free, as while a GPU computes);
  the share of the loop's time spent waiting for the next batch, per number of workers.
- agree: what one agreement between ranks costs (`distributed.max_over_ranks`, the all-reduce
  of three numbers the loop does every K steps under torchrun), two gloo processes on this CPU;
  the old loop did two such all-reduces every step.
- speed: `ichseg train --preset small` for one epoch of 12 steps on 8 cases, with this tree's
  code and with `--base` (a tree of the code before, e.g. `git archive main`), alternated;
  seconds of the epoch (steps and validation) from history.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
STAND_IN_STEP = 0.150


def dataset(work: Path, count: int, total: int) -> Path:
    """The first `count` cases of the synthetic set of `total`, as a folder of links."""
    full = work / f"data{total}"
    if not (full / "dataset.json").is_file() and not (
            full / "images" / f"synth_{count:03d}.nii.gz").is_file():
        from ichseg.data.synth import write_dataset

        started = time.monotonic()
        write_dataset(full, total, seed=0, shape=(512, 512, 32), spacing=(0.45, 0.45, 5.0))
        print(f"synthesised {total} cases in {time.monotonic() - started:.0f} s")
    if count == total:
        return full
    subset = work / f"subset{count}"
    for kind in ("images", "labels"):
        (subset / kind).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            link = subset / kind / f"synth_{k:03d}.nii.gz"
            if not link.exists():
                link.symlink_to(full / kind / f"synth_{k:03d}.nii.gz")
    return subset


def env(src: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "ICHSEG_CACHE": str(cache)}


def peak_rss_of(command: list[str], environment: dict[str, str]) -> tuple[float, float]:
    """(peak resident MiB of the command's process tree, seconds), run through a wrapper so that
    each measurement has its own RUSAGE_CHILDREN."""
    wrapper = ("import resource, subprocess, sys, time; t = time.monotonic(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "time.monotonic() - t)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], env=environment, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) / 1024, float(out[1])


def memory(args: argparse.Namespace) -> None:
    total = max(args.cases)
    cache = args.work / "cache"
    full = dataset(args.work, total, total)
    prepare = ("from ichseg.config import preset_config; from ichseg.data.cache import "
               "load_cases; from ichseg.data.layouts import find_cases; import sys; "
               "load_cases(preset_config('default').data, find_cases(sys.argv[1]).cases)")
    rss, seconds = peak_rss_of([sys.executable, "-c", prepare, str(full)], env(SRC, cache))
    print(f"| prepare {total} cases (cold cache, {os.cpu_count()} CPUs) | {rss:.0f} | "
          f"{seconds:.0f} s |")
    print("| cases | peak RSS MiB | seconds |\n|---|---|---|")
    for count in args.cases:
        data = dataset(args.work, count, total)
        run = args.work / f"run{count}"
        command = [sys.executable, "-m", "ichseg", "train", "--data", str(data), "--run-dir",
                   str(run), "--mode", "new", "--preset", "default", "--quiet", "--epochs", "1",
                   "--set", "model.base_width=4", "--set", "training.steps_per_epoch=4",
                   "--set", f"data.validation_fraction={1 / count}",
                   "--set", "inference.overlap=0"]
        rss, seconds = peak_rss_of(command, env(SRC, cache))
        print(f"| {count} | {rss:.0f} | {seconds:.0f} |")


def wait(args: argparse.Namespace) -> None:
    import torch

    from ichseg.config import preset_config
    from ichseg.data.cache import load_cases
    from ichseg.data.layouts import find_cases
    from ichseg.data.loader import training_batches
    from ichseg.data.sampling import PatchSampler

    os.environ["ICHSEG_CACHE"] = str(args.work / "cache")
    cfg = preset_config("default")
    cases = load_cases(cfg.data, find_cases(dataset(args.work, 6, max(args.cases))).cases)
    sampler = PatchSampler(cases, cfg, seed=0)
    print(f"| workers | steps | waited s | loop s | waiting share | first batch s |  "
          f"(stand-in step {STAND_IN_STEP * 1000:.0f} ms)\n|---|---|---|---|---|---|")
    for workers in args.workers:
        cfg.data.num_workers = workers
        batches = training_batches(sampler, cfg, torch.device("cpu"), 1, 0, args.steps)
        waited, first = 0.0, 0.0
        started = time.monotonic()
        for step in range(args.steps):
            tick = time.monotonic()
            next(batches)
            took = time.monotonic() - tick
            first = took if step == 0 else first
            waited += took if step else 0.0  # the first batch of a session waits in any case
            time.sleep(STAND_IN_STEP)
        loop = time.monotonic() - started - first
        del batches
        print(f"| {workers} | {args.steps - 1} | {waited:.2f} | {loop:.2f} | "
              f"{100 * waited / loop:.1f} % | {first:.2f} |")


def speed(args: argparse.Namespace) -> None:
    data = dataset(args.work, 8, max(args.cases))
    cache = args.work / "cache_small"
    trees = {"this tree": SRC, "base": args.base / "src"}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for repeat in range(-1, args.repeats):
        for name, src in trees.items():
            run = args.work / "speed_run"
            command = [sys.executable, "-m", "ichseg", "train", "--data", str(data),
                       "--run-dir", str(run), "--mode", "new", "--preset", "small", "--quiet",
                       "--epochs", "1", "--set", f"training.steps_per_epoch={12 if repeat >= 0 else 1}"]
            subprocess.run(command, env=env(src, cache), check=True, capture_output=True)
            if repeat >= 0:  # the first round fills the caches
                with open(run / "history.csv") as f:
                    times[name].append(float(next(csv.DictReader(f))["epoch_seconds"]))
    print("| code | epoch seconds (each run) | median |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{statistics.median(values):.1f} |")
    print(f"ratio this tree / base: "
          f"{statistics.median(times['this tree']) / statistics.median(times['base']):.2f}")


def _agree_rank(rank: int, store: str, calls: int, out: str) -> None:
    import torch.distributed as dist

    from ichseg.training import distributed

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        distributed.max_over_ranks([0.0, 0.0, 0.0])
        started = time.perf_counter()
        for _ in range(calls):
            distributed.max_over_ranks([0.0, 1.0, 0.5])
        if rank == 0:
            Path(out).write_text(str((time.perf_counter() - started) / calls))
    finally:
        dist.destroy_process_group()


def agree(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    out, store = args.work / "agree.txt", args.work / "agree_store"
    store.unlink(missing_ok=True)
    mp.spawn(_agree_rank, args=(str(store), 500, str(out)), nprocs=2)
    seconds = float(out.read_text())
    print(f"| one agreement (gloo, 2 processes) | {seconds * 1e6:.0f} us |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", default=["memory", "wait", "agree", "speed"])
    parser.add_argument("--cases", type=int, nargs="+", default=[6, 36, 200])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--base", type=Path, default=Path("/tmp/ichseg_base"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(SRC))
    print(f"CPUs: {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), load "
          f"{os.getloadavg()[0]:.1f}; resource limit {resource.getrlimit(resource.RLIMIT_AS)}")
    for part in args.parts:
        {"memory": memory, "wait": wait, "speed": speed, "agree": agree}[part](args)


if __name__ == "__main__":
    main()
