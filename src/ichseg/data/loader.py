"""Training batches prepared ahead of the steps, by DataLoader worker processes.

The loop takes its batches from one DataLoader iterator per session, over `EpochBatches` from
the position the run stands at to its last step: the workers start once and live across epochs
and validations (what `persistent_workers` gives a loader made per epoch), each preparing whole
batches (`batch_size=None`), `PREFETCH_BATCHES` each ahead of the steps. Every batch is still
`PatchSampler.batch(epoch, step)`, a pure function of (seed, epoch, index), so the number of
workers changes when a batch is made, never what it holds, and a resumed run starts its loader at
the saved position.

Workers are forked (Linux): they share the memory-mapped cases and the sampler with the trainer
without copying. They ignore SIGINT: a Ctrl-C reaches the whole terminal process group, and the
trainer, not its workers, decides when to stop (and shuts them down when it does). SIGTERM is
left alone: it is how multiprocessing ends workers that outlive their loader.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from ichseg.config import Config
from ichseg.data.sampling import EpochBatches, PatchSampler
from ichseg.processes import usable_cpus

# Batches each worker keeps ready (DataLoader's prefetch_factor).
PREFETCH_BATCHES = 2
# Workers that "auto" (-1) starts on CUDA at most: benchmarks/loader.py measures how many a
# `default` step of 150 ms needs to never wait (BENCHMARKS.md).
MAX_AUTO_WORKERS = 8


def resolve_workers(setting: int, device: torch.device) -> int:
    """`data.num_workers`, or for -1: one per CPU but one (up to `MAX_AUTO_WORKERS`, at least
    one) on CUDA, where the trainer's own thread mostly waits for the GPU; 0 on a CPU, where the
    network's threads already use every core and workers would only take cores from them."""
    if setting >= 0:
        return setting
    if device.type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, usable_cpus() - 1))


def _quiet_worker(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_batches(sampler: PatchSampler, cfg: Config, device: torch.device, epoch: int,
                     start_step: int, steps: int, rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Rank `rank`'s batches from step `start_step` of `epoch` on, `steps` of them, running into
    the following epochs; prepared ahead by `resolve_workers(data.num_workers)` processes and
    pinned for the copy to the GPU on CUDA."""
    workers = resolve_workers(cfg.data.num_workers, device)
    dataset = EpochBatches(sampler, epoch, start_step, steps, rank, world_size,
                           steps_per_epoch=cfg.training.steps_per_epoch)
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=PREFETCH_BATCHES if workers else None,
        worker_init_fn=_quiet_worker if workers else None,
        # Its own generator: the loader draws a base seed when iterated, which would otherwise
        # move torch's global generator (saved in checkpoints) at every session start.
        generator=torch.Generator())
    return iter(loader)
