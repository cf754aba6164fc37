"""Data-parallel training under `torchrun`: process group, DDP, and the agreements between ranks.

`torchrun --nproc-per-node N -m ichseg train ...` starts N copies of the ordinary command with
RANK, WORLD_SIZE and LOCAL_RANK in their environment; that is how a distributed job is detected.
Everything here is PyTorch's own machinery (`torch.distributed`, `DistributedDataParallel`,
`SyncBatchNorm`); the rules that make a job behave like one trainer are:

- the global batch `training.batch_size` is split across ranks; `PatchSampler.batch(epoch, step,
  rank, world_size)` gives each rank its contiguous share, so N ranks see the samples one process
  would;
- the training loss is nnU-Net's batch Dice over the *global* batch (the Dice sums are all-reduced
  with gradient, as nnU-Net does under DDP) plus the cross-entropy of the rank's share, which DDP's
  gradient averaging turns into the global mean;
- every decision that could differ between ranks (stop on a signal or the time limit, a timed
  save) is all-reduced at a step boundary, so no rank waits alone in a collective: one
  all-reduce every K steps, K chosen from the measured step time (`loop.AGREE_SECONDS`), and at
  the end of each epoch; the training loss is summed on each device and averaged over ranks only
  when it is saved or logged;
- rank 0 alone writes files and logs; the others wait for each checkpoint commit;
- an error on one rank reaches the others (`shared_failures`, `failures_published`): every rank
  ends with the failing rank's message, none waits for the process group's timeout.

Without torchrun every function here is a no-op, and the trainer runs exactly as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ichseg.config import Config
from ichseg.errors import DiskFull, OtherRankFailed, UsageError, full_disk

log = logging.getLogger("ichseg.training")

T = TypeVar("T")

# MONAI's DiceLoss defaults, which the single-process loss uses.
_SMOOTH = 1e-5


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job; `Ranks()` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def ranks_from_environment() -> Ranks:
    """This process's rank as torchrun set it (before any process group exists)."""
    if not launched_by_torchrun():
        return Ranks()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("the environment variables RANK, WORLD_SIZE and LOCAL_RANK set by "
                         "torchrun must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"environment variable RANK={rank} is not a rank of WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def is_active() -> bool:
    """This process is a rank of torchrun's process group (of one rank or more)."""
    return dist.is_available() and dist.is_initialized()


def check_batch_split(cfg: Config, ranks: Ranks) -> None:
    """The global batch must split evenly; called before anything is written."""
    if cfg.training.batch_size % ranks.world_size:
        raise UsageError(f"setting training.batch_size ({cfg.training.batch_size}) must be a "
                         f"multiple of the number of processes ({ranks.world_size}); it is the "
                         "global batch, split across ranks")


def start(cfg: Config, ranks: Ranks) -> None:
    """Join torchrun's process group: NCCL when training on CUDA, gloo on CPUs.

    Also with one process, so that `torchrun --nproc-per-node 1` runs the same DDP code path.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return
    from ichseg.device import pick_device

    on_cuda = pick_device(cfg.training.device).type == "cuda"
    if on_cuda:
        if ranks.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {ranks.local_rank} has no GPU: this node has "
                             f"{torch.cuda.device_count()}; give torchrun --nproc-per-node "
                             "at most that many")
        torch.cuda.set_device(ranks.local_rank)
    # torchrun's rendezvous store, as `init_process_group("env://")` would use it, but with the
    # group's keys under this attempt's prefix: the static rendezvous (`--master-port`) keeps one
    # store across `--max-restarts` restarts, and without the prefix a restarted rank reads the
    # dead attempt's addresses and cannot connect.
    store, rank, world_size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    global _job_store
    _job_store = dist.PrefixStore(f"ichseg/attempt_{attempt}/", store)
    dist.init_process_group("nccl" if on_cuda else "gloo", store=_job_store, rank=rank,
                            world_size=world_size)


def meet_before_leaving() -> None:
    """Wait until every rank has finished its part of the job (training and its last save), so
    that none leaves the group while another still talks to it: a gloo rank whose peer tore its
    group down mid-collective has aborted the whole process (SIGABRT) after everything was saved.
    Only on the way out of a job that went well: after an error, a rank may never come."""
    if is_active():
        dist.barrier()


def stop() -> None:
    """Leave the process group (at the end of the job, also after an error)."""
    global _job_store
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _job_store = None


def rank_device(device: torch.device) -> torch.device:
    """Rank r of a CUDA job trains on cuda:LOCAL_RANK (`start` made it the current device)."""
    if device.type == "cuda" and is_active():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- the model and the loss -------------------------------------------------------------------

def wrap_model(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model`; BatchNorm (`model.norm=batch`) synchronised
    across the ranks on GPUs (`model.sync_batchnorm`, on unless a run from before it said no).

    `model` itself stays the plain network whose state_dict goes into checkpoints; the returned
    wrapper is what training steps call. Single process: `model` unchanged.
    """
    if not is_active():
        return model
    if cfg.model.sync_batchnorm and cfg.model.norm == "batch":
        if device.type == "cuda":
            # Converts the BatchNorm children in place, keeping their parameters and buffers,
            # so `model` (and the optimizer built on its parameters) see the same tensors.
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif dist.get_rank() == 0:
            # PyTorch 2.13's SyncBatchNorm raises on CPU tensors.
            log.warning("model.norm=batch under torchrun: PyTorch synchronises BatchNorm on GPUs "
                        "only, so on CPUs each rank normalises with its own share of the batch")
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, differentiable: its backward all-reduces the gradient."""
    if not is_active():
        return tensor
    import torch.distributed._functional_collectives as funcol

    reduced = funcol.all_reduce(tensor, "sum", dist.group.WORLD)
    return reduced.wait() if isinstance(reduced, funcol.AsyncCollectiveTensor) else reduced


class GlobalBatchDiceCE(nn.Module):
    """The Dice + CE term of `losses.dice_ce()`, with the batch Dice taken over the global batch.

    MONAI's `DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)`
    sums intersection and volumes over the batch before dividing; under DDP each rank holds part
    of the batch, so those sums are all-reduced (with gradient) first, as nnU-Net's DDP batch Dice
    does. Every rank then has the global Dice; the all-reduce's backward sums the ranks'
    gradients and DDP averages them, which gives exactly the global Dice's gradient. The CE is the
    rank's mean, which DDP's averaging turns into the global mean (every rank has the same share).
    Single process: identical to MONAI's term.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits, 1)
        target = F.one_hot(labels[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        reduce = [0, *range(2, logits.ndim)]
        fg_prob, fg_target = probabilities[:, 1:], target[:, 1:]  # no background channel
        sums = torch.stack([(fg_prob * fg_target).sum(reduce), fg_target.sum(reduce),
                            fg_prob.sum(reduce)])
        intersection, truth, predicted = _all_reduce_with_grad(sums)
        dice = 1.0 - (2.0 * intersection + _SMOOTH) / (truth + predicted + _SMOOTH)
        return dice.mean() + F.cross_entropy(logits, labels[:, 0].long())


def training_loss(loss_fn: nn.Module) -> nn.Module:
    """The loss training steps use: `loss_fn` itself, or under DDP a copy whose Dice + CE term is
    `GlobalBatchDiceCE`. (Validation keeps `loss_fn`: ranks validate different cases, so a
    collective inside its loss would pair unrelated calls.)"""
    if not is_active():
        return loss_fn
    import copy

    global_loss = copy.deepcopy(loss_fn)
    global_loss.term = GlobalBatchDiceCE()
    return global_loss


# --- agreements between ranks -------------------------------------------------------------------

def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (stop requests, time limits, timed saves)."""
    return bool(max_over_ranks([1.0 if flag else 0.0])[0])


def max_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise maxima across ranks, in one all-reduce (several decisions agreed at once)."""
    if not is_active():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums across ranks, in float64."""
    if not is_active():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def mean_over_ranks(value: float) -> float:
    """The mean of one number across ranks (every rank holds an equal share of the batch)."""
    if not is_active():
        return value
    return sum_over_ranks([value])[0] / dist.get_world_size()


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), which the checkpoint
    holds, so that validation on any rank scores the model that is saved."""
    if not is_active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def same_on_every_rank(value: Any, what: str) -> None:
    """UsageError on every rank unless `value` is the same on all (e.g. the checkpoint chosen)."""
    if not is_active():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise UsageError(f"the ranks of this job found different {what} ({values}); do all "
                         "nodes see the same run folder?")


def on_main(action: Callable[[], T]) -> T | None:
    """Run `action` on rank 0 only, the others waiting for it; an error there is raised on every
    rank with its message (`shared_failures`), so the whole job exits together (2 for a
    UsageError, 1 for a full disk) instead of leaving the others waiting in a collective."""
    result = None
    with shared_failures():
        if not is_active() or dist.get_rank() == 0:
            result = action()
    return result


def in_turn(action: Callable[[], T]) -> T:
    """Rank 0 first, then the others: for work whose first run fills a cache the rest reuse
    (decoding the dataset). An error on any rank is raised on all (`shared_failures`)."""
    if not is_active():
        return action()
    first = dist.get_rank() == 0
    with shared_failures():
        if first:
            result = action()
    with shared_failures():
        if not first:
            result = action()
    return result


# --- one error, every rank ----------------------------------------------------------------------
#
# A rank that fails alone would leave the others waiting in their next collective: with gloo
# until the dead rank's connections close (and then with a traceback of their own), with NCCL
# until the watchdog's timeout. Where the ranks meet anyway (a save, a validation, the dataset's
# preparation), `shared_failures` makes the failing rank meet them with its error instead. Inside
# a training step that is not possible (the others wait in DDP's collectives, which the failing
# rank cannot join), so `failures_published` leaves its error in the process group's store before
# it exits, and the others, whose collective then fails, raise that error instead of their own.

_job_store: dist.Store | None = None  # the process group's store (`start`)
_agreed: Exception | None = None  # the error `shared_failures` raised on every rank
_FAILURE_KEY = "failure"
# How long a rank whose collective failed asks the store for the failing rank's error.
_STORE_SECONDS = 10.0


@contextlib.contextmanager
def shared_failures() -> Iterator[None]:
    """Every rank leaves the block together, and an error raised inside it on any rank is raised
    on every rank: the same class and message (the lowest failing rank's; an unexpected error
    keeps its traceback on its own rank and is `OtherRankFailed`, one sentence, on the others).

    Every rank must enter the block. It costs one all-reduce of one number when nothing failed,
    and doubles as a barrier.
    """
    if not is_active():
        yield
        return
    try:
        yield
    except Exception as raised:
        _raise_agreed(_first_failure(_own_form(raised, Path.cwd())), raised)
    else:
        _raise_agreed(_first_failure(None), None)


def _raise_agreed(chosen: Exception | None, raised: Exception | None) -> None:
    global _agreed
    if chosen is None:
        return
    _agreed = chosen
    if chosen is raised:
        raise chosen
    raise chosen from None


def _first_failure(error: Exception | None) -> Exception | None:
    """Meet the other ranks: None when none failed, else the error this rank must raise (its own
    when it is the lowest failing rank, else that rank's)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    # The maximum of (world - rank) over the failing ranks names the lowest of them.
    flag = torch.tensor([world - rank if error is not None else 0], dtype=torch.float64,
                        device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    source = world - int(flag.item())
    report = [_report(error) if rank == source else None]
    dist.broadcast_object_list(report, src=source)
    return error if rank == source else _rebuilt(report[0])


def _own_form(error: Exception, folder: Path) -> Exception:
    """A full disk reported as elsewhere in ichseg (a DiskFull); any other error as it is."""
    return (full_disk(error, folder) if isinstance(error, OSError) else None) or error


def _report(error: Exception) -> dict[str, Any]:
    """What the other ranks need to raise the same error: its kind and message."""
    if isinstance(error, (UsageError, DiskFull, OtherRankFailed)):
        return {"kind": type(error).__name__, "message": str(error),
                "folder": str(getattr(error, "folder", ""))}
    return {"kind": OtherRankFailed.__name__,
            "message": f"rank {dist.get_rank()} of this job failed with "
                       f"{type(error).__name__}: {error} (its traceback is in that rank's output)"}


def _rebuilt(report: dict[str, Any]) -> Exception:
    if report["kind"] == UsageError.__name__:
        return UsageError(report["message"])
    if report["kind"] == DiskFull.__name__:
        return DiskFull.reported(report["folder"], report["message"])
    return OtherRankFailed(report["message"])


@contextlib.contextmanager
def failures_published(folder: Path) -> Iterator[None]:
    """Around the whole job on every rank (a no-op without torchrun): an error that was not shared
    already is left in the process group's store before the rank exits; a rank that fails after
    another published its error (its collective broke when that rank left) raises that error
    instead. `folder` (the run folder) is named when a full disk does not say which file."""
    if not is_active():
        yield
        return
    try:
        yield
    except Exception as raised:
        if raised is _agreed:
            raise
        first = _published_failure()
        if first is not None:
            raise _rebuilt(first) from None
        error = _own_form(raised, folder)
        _publish(error)
        if error is raised:
            raise
        raise error from None


def _publish(error: Exception) -> None:
    """Leave this rank's error in the store, unless another rank's is there first."""
    if _job_store is None:
        return
    report = {"rank": dist.get_rank(), **_report(error)}
    try:
        _job_store.set_timeout(timedelta(seconds=_STORE_SECONDS))
        _job_store.compare_set(_FAILURE_KEY, "", json.dumps(report))
    except (RuntimeError, OSError):
        pass  # the store went with the rank that hosted it: the others get gloo's or NCCL's error


def _published_failure() -> dict[str, Any] | None:
    """Another rank's error, published in the store (None: none, or the store is gone)."""
    if _job_store is None:
        return None
    try:
        _job_store.set_timeout(timedelta(seconds=_STORE_SECONDS))
        if not _job_store.check([_FAILURE_KEY]):
            return None
        report = json.loads(_job_store.get(_FAILURE_KEY))
    except (RuntimeError, OSError, ValueError):
        return None
    return report if report.get("rank") != dist.get_rank() else None


@contextlib.contextmanager
def main_rank_logs(ranks: Ranks) -> Iterator[None]:
    """Only rank 0 reports (warnings included: every rank would repeat them); the other ranks
    keep their errors."""
    logger = logging.getLogger("ichseg")
    previous = logger.level
    if not ranks.is_main:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def note_world_size(checkpoint: dict[str, Any] | None, cfg: Config, ranks: Ranks) -> None:
    """Say so when a run continues with another number of processes than it was saved with."""
    if checkpoint is None:
        return
    saved = checkpoint.get("world_size")
    if saved is None or int(saved) == ranks.world_size:
        return
    log.warning("continuing a run saved by %d process(es) with %d: the global batch stays %d "
                "(%d per process); the continuation is exact only with the same number of "
                "processes", int(saved), ranks.world_size, cfg.training.batch_size,
                cfg.training.batch_size // ranks.world_size)


def mode_after_restart(mode: str) -> str:
    """`new` on a torchrun restart means `continue`: the first incarnation already started the
    run, and starting it over would archive the work done since."""
    if mode == "new" and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        log.warning("torchrun restarted this job: --mode new continues the run it began")
        return "continue"
    return mode
