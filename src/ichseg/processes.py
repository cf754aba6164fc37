"""Independent jobs spread over worker processes, with a progress bar: the one pattern behind
preparing uncached scans (`data.cache`) and drawing synthetic cases (`data.synth`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a scheduler or container may cut
    below the machine's count)."""
    return len(os.sched_getaffinity(0))


def run_jobs(function: Callable[..., Any], jobs: Sequence[tuple], workers: int,
             bar: tqdm) -> None:
    """`function(*job)` for every job, in `workers` processes when more than one (else in this
    one, in order), `bar` advanced as each finishes. The first error ends the work: the jobs not
    yet started are cancelled, and the error is raised here."""
    if workers <= 1:
        for job in jobs:
            function(*job)
            bar.update()
        return
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(function, *job) for job in jobs]
        try:
            for done in as_completed(futures):
                done.result()
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
