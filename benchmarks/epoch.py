"""Where a training epoch's time goes: drawing the batches, the optimizer steps, validation.

    python benchmarks/epoch.py DATA [--preset small] [--steps 40] [--repeats 3] [--set K=V ...]
    python benchmarks/epoch.py --network-only [--preset small]

Builds the Trainer a new run of DATA would build (the preset's config, its split, the prepared
cases from the cache) and times, each `--repeats` times, the parts of one epoch of `--steps`
steps on their own: the sampler drawing the batches (augmentations included), the optimizer steps
on those batches, and the validation of the held-out cases as the loop runs it. Prints the
medians in seconds and each part's share. Nothing is written but the cache.

`--network-only` times the preset's network alone: the median of 20 AdamW steps on a random batch
of its patch size. It imports only `resolve_config` and `build_model`, so with PYTHONPATH set to
an older checkout it times that checkout's network side by side with this one's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def network_step(preset: str) -> None:
    from ichseg.config import resolve_config
    from ichseg.models import build_model

    cfg = resolve_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    shape = (cfg.training.batch_size, len(cfg.data.windows), *cfg.data.patch_size)
    images = torch.randn(shape)
    labels = (torch.rand(shape[0], *shape[2:]) > 0.9).long()

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        out = model(images)
        out = out[0] if isinstance(out, (list, tuple)) else out  # the full-resolution head
        torch.nn.functional.cross_entropy(out, labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    for _ in range(3):
        step()
    print(f"preset {preset}, network step on {list(shape)}: median of 20 "
          f"{statistics.median(step() for _ in range(20)):.3f} s "
          f"({torch.get_num_threads()} torch threads)")


def main() -> None:
    from ichseg.config import resolve_config
    from ichseg.data.cache import load_cases
    from ichseg.data.layouts import find_cases
    from ichseg.data.split import split_for
    from ichseg.training.loop import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--network-only", action="store_true")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    if args.network_only:
        network_step(args.preset)
        return
    if args.data is None:
        parser.error("DATA is needed unless --network-only")

    cfg = resolve_config(args.preset, sets=[f"data.path={args.data}", *args.sets])
    index = find_cases(cfg.data.path, cfg.data.layout)
    labelled = {case.case_id: case for case in index.cases if case.label is not None}
    split = split_for(list(labelled.values()), index.layout, cfg.data, cfg.training.seed)
    prepared = {case.case_id: case for case in load_cases(
        cfg.data, list(labelled.values()), progress=False, label_mapping=index.label_mapping)}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, [prepared[i] for i in split["train"]],
                          [prepared[i] for i in split["validation"]], run_dir, target_epochs=1)
        for step in range(3):  # warm-up: the first steps compile and allocate
            trainer.train_step(*trainer.sampler.batch(1, step))
        times: dict[str, list[float]] = {"draw the batches": [], "optimizer steps": [],
                                         "validation": []}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            batches = [trainer.sampler.batch(2 + repeat, step) for step in range(args.steps)]
            times["draw the batches"].append(time.perf_counter() - start)
            start = time.perf_counter()
            for images, labels in batches:
                loss = trainer.train_step(images, labels)
            float(loss)  # wait for the last step
            times["optimizer steps"].append(time.perf_counter() - start)
            start = time.perf_counter()
            trainer.validate()
            times["validation"].append(time.perf_counter() - start)
    medians = {part: statistics.median(values) for part, values in times.items()}
    total = sum(medians.values())
    shapes = ", ".join("x".join(map(str, prepared[i].hu.shape)) for i in split["validation"])
    print(f"{args.data}: preset {args.preset}, {len(split['train'])} training cases, "
          f"{len(split['validation'])} validation cases ({shapes}), {args.steps} steps of "
          f"{cfg.training.batch_size} patches {cfg.data.patch_size}, "
          f"{torch.get_num_threads()} torch threads; medians of {args.repeats}")
    print("| part of an epoch | seconds | share |")
    print("|---|---:|---:|")
    for part, seconds in medians.items():
        print(f"| {part} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"| one epoch | {total:.2f} | |")
    print(f"one optimizer step: {medians['optimizer steps'] / args.steps:.3f} s")


if __name__ == "__main__":
    main()
