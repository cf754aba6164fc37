"""Data-parallel training under torchrun (issue 6), on CPUs with gloo and two processes.

The jobs are real: `python -m torch.distributed.run --nproc-per-node 2 -m ichseg train ...` as a
child process, on the tiny preset with a 16 x 16 x 8 patch and two steps per epoch. Workers are
killed by their own PIDs, found as the launcher's children and told apart by the RANK torchrun
put in their environment.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainrun import (
    LOSS_COLUMNS,
    assert_same_training,
    child_env,
    cli_command,
    fast_args,
    load_last,
)

from ichseg import fileio
from ichseg.training import distributed
from ichseg.training.distributed import GlobalBatchDiceCE
from ichseg.training.losses import dice_ce

CHILD = Path(__file__).with_name("ddp_child.py")
EPOCHS = 3
STEPS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_command(args: list[str], nproc: int = 2, launcher: tuple[str, ...] = (),
                script: Path | None = None) -> list[str]:
    """`torchrun` (as `python -m torch.distributed.run`) of `ichseg ARGS`, or of `script ARGS`."""
    target = [str(script)] if script else ["-m", "ichseg"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port()), *launcher, *target, *args]


def run_workers(args: list[str], fault: str, timeout: float = 300) -> list[tuple[int, str]]:
    """The two workers of a job started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT in their environment, OMP_NUM_THREADS=1), but without torchrun,
    which stops the other workers as soon as one exits: each worker's own exit code and stderr.
    `fault` as `tests/trainrun.py` takes it."""
    port = free_port()
    workers = [subprocess.Popen(cli_command(args, fault), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={
                                    **child_env(), "RANK": str(rank), "WORLD_SIZE": "2",
                                    "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                                    "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
               for rank in range(2)]
    try:
        ended = [worker.communicate(timeout=timeout)[1] for worker in workers]
        return [(worker.returncode, stderr) for worker, stderr in zip(workers, ended, strict=True)]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def run_job(args: list[str], timeout: float = 240, **options) -> subprocess.CompletedProcess:
    return subprocess.run(job_command(args, **options), env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_job(args: list[str], **options) -> subprocess.Popen:
    return subprocess.Popen(job_command(args, **options), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return fast_args(data, run, "--epochs", str(EPOCHS), "--set", "training.save_every_steps=1",
                     *extra, steps=STEPS)


def worker_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The PID of the worker of `rank` among the launcher's children (torchrun's agent runs in
    the launcher's own process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        for pid in children.read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} appeared")


def wait_for_step(run: Path, step: int, job: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run's manifest commits a generation at `step` or later."""
    manifest = run / "checkpoints" / "manifest.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended early:\n{job.stdout.read()}"
        try:
            steps = [g["step"] for g in json.loads(manifest.read_text())["generations"]]
        except (OSError, ValueError, KeyError):
            steps = []
        if steps and max(steps) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint at step {step} within {timeout}s")


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-process job never stopped: the state every interrupted one must end at."""
    run = tmp_path_factory.mktemp("ddp") / "reference"
    assert_ok(run_job(train_args(tiny_dataset, run)))
    return load_last(run)


# --- the loss ---------------------------------------------------------------------------------

def _random_batch(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 2, 6, 5, 4, generator=generator, dtype=torch.float64)
    labels = (torch.rand(batch, 1, 6, 5, 4, generator=generator) > 0.7).long()
    return logits, labels


def test_global_batch_dice_equals_monai_in_one_process():
    logits, labels = _random_batch()
    ours = logits.clone().requires_grad_()
    monai = logits.clone().requires_grad_()
    mine, theirs = GlobalBatchDiceCE()(ours, labels), dice_ce()(monai, labels)
    mine.backward()
    theirs.backward()
    assert torch.allclose(mine, theirs, rtol=1e-12, atol=0)
    assert torch.allclose(ours.grad, monai.grad, rtol=1e-10, atol=1e-15)


def _two_rank_loss(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        logits, labels = _random_batch()
        share = slice(2 * rank, 2 * rank + 2)
        mine = logits[share].clone().requires_grad_()
        loss = GlobalBatchDiceCE()(mine, labels[share])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": mine.grad}, f"{out}.{rank}")
        # Both ranks done before either tears its connections down, as a training job leaves
        # (without it a rank once aborted here with SIGABRT, seen once in CI).
        distributed.meet_before_leaving()
    finally:
        dist.destroy_process_group()


def test_global_batch_dice_over_two_ranks_gives_the_full_batch_gradient(tmp_path):
    """DDP averages the ranks' gradients: half of each rank's gradient must be the full batch's
    gradient for its samples, and the mean of the ranks' losses the full batch's loss."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.spawn(_two_rank_loss, args=(str(tmp_path / "store"), out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    logits, labels = _random_batch()
    full = logits.clone().requires_grad_()
    loss = dice_ce()(full, labels)
    loss.backward()
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    assert torch.allclose(mean_loss, loss.detach(), rtol=1e-12, atol=0)
    shares = torch.cat([ranks[0]["grad"], ranks[1]["grad"]]) / 2
    assert torch.allclose(shares, full.grad, rtol=1e-9, atol=1e-15)


# --- whole jobs -------------------------------------------------------------------------------

def test_two_processes_train_like_one_with_the_same_global_batch(tiny_dataset, tmp_path):
    """Same samples, same gradients: model and loss columns agree to float rounding. (BatchNorm
    is swapped for a per-sample norm: see ddp_child.py for why.)"""
    one, two = tmp_path / "one", tmp_path / "two"
    args = fast_args(tiny_dataset, one, "--epochs", "2", steps=STEPS)
    single = subprocess.run([sys.executable, str(CHILD), *args], env=child_env(),
                            capture_output=True, text=True, timeout=240)
    assert_ok(single)
    assert_ok(run_job(fast_args(tiny_dataset, two, "--epochs", "2", steps=STEPS), script=CHILD))
    a, b = load_last(one), load_last(two)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 2 * STEPS)
    assert a["world_size"] == 1 and b["world_size"] == 2
    for name, tensor in a["model_state"].items():
        assert torch.allclose(tensor, b["model_state"][name], rtol=1e-4, atol=1e-6), name
    for column in (*LOSS_COLUMNS, "val_dice"):
        assert a["history"][column] == pytest.approx(b["history"][column], rel=1e-5), column
    # Files, logs and progress bars come from rank 0 alone: each epoch is reported once.
    log = (two / "train.log").read_text()
    assert log.count("epoch 2/2: train loss") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_killed_job_continues_bit_identically_then_on_one_process(reference, tiny_dataset,
                                                                     tmp_path):
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run)
    # 1. A worker SIGKILLed mid-epoch: torchrun stops the other one, the job fails.
    job = start_job(args)
    wait_for_step(run, 3, job)
    os.kill(worker_pid(job, 1), signal.SIGKILL)
    assert job.wait(timeout=120) != 0
    partial = load_last(run)
    assert 3 <= partial["step"] < EPOCHS * STEPS
    # 2. The same command continues from the last checkpoint and ends where the reference did.
    assert_ok(run_job(args))
    final = load_last(run)
    assert_same_training(reference, final)
    assert final["history"]["session"][-1] == 2
    # 3. One more epoch on a single process: allowed, said in the log, global batch unchanged.
    single = subprocess.run([sys.executable, "-m", "ichseg", *args, "--epochs", str(EPOCHS + 1)],
                            env=child_env(), capture_output=True, text=True, timeout=240)
    assert_ok(single)
    assert "saved by 2 process(es) with 1: the global batch stays 2" in single.stderr
    after = load_last(run)
    assert (after["epoch"], after["step"], after["world_size"]) == (EPOCHS + 1,
                                                                    (EPOCHS + 1) * STEPS, 1)
    assert after["history"]["train_loss"][:EPOCHS] == reference["history"]["train_loss"]
    assert math.isfinite(after["history"]["train_loss"][-1])


def test_a_worker_killed_under_max_restarts_is_restarted_and_finishes(reference, tiny_dataset,
                                                                       tmp_path):
    """Rank 0, the lock holder, dies: torchrun restarts both workers, which take over the stale
    lock and continue from the last checkpoint to the same end as a job never stopped."""
    run = tmp_path / "run"
    job = start_job(train_args(tiny_dataset, run), launcher=("--max-restarts", "1"))
    wait_for_step(run, 2, job)
    os.kill(worker_pid(job, 0), signal.SIGKILL)
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 0, output
    final = load_last(run)
    assert_same_training(reference, final)
    assert final["history"]["session"][-1] == 2


def test_sigterm_to_the_job_saves_once_and_stops_every_rank(reference, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run, "--set", "training.save_every_steps=0")
    job = start_job(args)
    wait_for_step(run, STEPS, job)  # the end of epoch 1 is saved even without periodic saves
    job.send_signal(signal.SIGTERM)  # torchrun forwards it to every worker
    output, _ = job.communicate(timeout=120)
    assert "stop requested: saved at epoch" in output
    assert output.count("stop requested: saved at epoch") == 1  # rank 0 reports, once
    assert_ok(run_job(args))
    assert_same_training(reference, load_last(run))


def test_a_batch_that_does_not_split_across_ranks_is_refused_before_writing(tiny_dataset,
                                                                           tmp_path):
    run = tmp_path / "run"
    done = run_job(train_args(tiny_dataset, run, "--set", "training.batch_size=3"))
    assert done.returncode != 0
    assert "training.batch_size (3) must be a multiple of the number of processes (2)" in (
        done.stdout + done.stderr)
    assert not run.exists()


def test_a_second_job_on_a_locked_run_exits_2(tiny_dataset, tmp_path):
    """Rank 0 fails to take the lock and exits 2; the job ends (rank 1 learns it through the
    broadcast, or torchrun stops it first) instead of waiting in the next collective."""
    from ichseg.training.lock import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        done = run_job(train_args(tiny_dataset, run), timeout=180)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written
    output = done.stdout + done.stderr
    assert done.returncode != 0
    # torchrun's summary: the first failure is an exit 2 with the lock's message. Rank 0 or
    # rank 1 (which learns of it through the broadcast and exits 2 with the same message), as
    # they race; torchrun then stops the other one with SIGTERM.
    assert re.search(r"Root Cause \(first observed failure\):.*?exitcode\s+: 2 ", output,
                     re.DOTALL), output
    assert f"run folder {run} is in use by PID {os.getpid()}" in output


# --- an error on one rank ends every rank with its message (issue 22) ---------------------------

def _failing_rank(rank: int, port: int, out: str) -> None:
    """Three failures in one process group of two: a UsageError on rank 1 and a bug on rank 0
    where the ranks meet (`shared_failures`), then a full disk on rank 1 outside any meeting
    point, while rank 0 waits in a collective that rank 1 never joins (as in a training step)."""
    import errno

    from ichseg.config import Config
    from ichseg.errors import UsageError

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = Config()
    cfg.training.device = "cpu"
    distributed.start(cfg, distributed.ranks_from_environment())
    raised = []

    def outcome(exc: Exception) -> None:
        raised.append([type(exc).__name__, str(exc), exc.__traceback__ is not None and any(
            frame.name == "_failing_rank" and "raise" in (frame.line or "")
            for frame in __import__("traceback").extract_tb(exc.__traceback__))])

    for culprit, error in ((1, UsageError("setting data.path names no folder")),
                           (0, ValueError("a bug"))):
        try:
            with distributed.shared_failures():
                if rank == culprit:
                    raise error
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            outcome(exc)
    try:
        with distributed.failures_published(Path(out)):
            if rank == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                              str(Path(out).with_name("part.tmp")))
            distributed.sum_over_ranks([1.0])
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        outcome(exc)
    finally:
        distributed.stop()
    Path(f"{out}.{rank}").write_text(json.dumps(raised))


def test_an_error_on_one_rank_is_raised_on_every_rank_with_its_message(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    ranks = mp.spawn(_failing_rank, args=(free_port(), out), nprocs=2, join=False)
    deadline = time.monotonic() + 300  # gloo's timeout, which no rank may wait for, is 30 min
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            raise AssertionError("a rank still waits in a collective")
    rank0, rank1 = (json.loads(Path(f"{out}.{r}").read_text()) for r in range(2))
    # Where the ranks meet: the same class and message on both; the culprit keeps its own
    # exception (and traceback), the other rank gets a fresh one.
    assert rank0[0] == ["UsageError", "setting data.path names no folder", False]
    assert rank1[0] == ["UsageError", "setting data.path names no folder", True]
    assert rank0[1] == ["ValueError", "a bug", True]
    assert rank1[1][:2] == ["OtherRankFailed", "rank 0 of this job failed with ValueError: a bug "
                                                "(its traceback is in that rank's output)"]
    # Outside: rank 1 publishes its full disk and leaves; rank 0's collective breaks and it
    # raises rank 1's error instead of gloo's.
    full = f"the disk holding {tmp_path} is full: writing part.tmp needed more space"
    assert rank1[2][0] == rank0[2][0] == "DiskFull"
    assert rank1[2][1] == rank0[2][1] and rank0[2][1].startswith(full)


@pytest.mark.slow
def test_a_full_disk_on_either_rank_ends_both_with_its_sentence_then_continues_exactly(
        reference, tiny_dataset, tmp_path):
    """ENOSPC at the file layer on rank 0 during its 2nd `last` save; then on rank 1 as it takes
    its 2nd batch of the next session (in a step: rank 0 waits in DDP's all-reduce). Each time
    both ranks exit 1 with the same full-disk sentence and no traceback, long before the process
    group's timeout (gloo's default, 30 minutes), and the checkpoints are those one process would
    leave: the last one committed before the failure. Then the same command, under torchrun,
    ends where a job never stopped did."""
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run)
    for fault, last_step in (("disk-full-checkpoint:2@0", 1), ("disk-full-in-batch:2@1", 2)):
        ended = run_workers(args, fault)
        sentences = []
        for code, stderr in ended:
            assert code == 1 and "Traceback" not in stderr, stderr
            errors = [line for line in stderr.splitlines() if "error" in line]
            assert len(errors) == 1 and " is full: " in errors[0], stderr
            sentences.append(errors[0])
        assert sentences[0] == sentences[1]
        assert load_last(run)["step"] == last_step
    assert not [p for p in run.rglob("*") if fileio.is_temp(p.name)]
    assert_ok(run_job(args))
    assert_same_training(reference, load_last(run))
