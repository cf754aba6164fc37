"""Helpers of the training tests: a very small training configuration, `ichseg train` in a child
process, state comparison, and faults injected at exact moments.

Run as a script (`python tests/trainrun.py FAULT -- ichseg-args...`), it is the child that
injects a fault into an otherwise ordinary `ichseg train`:
  kill-in-save:N    SIGKILL itself halfway through writing the N-th `last` checkpoint
  kill-after-best:N SIGKILL itself right after the N-th `best` checkpoint is committed
  sigterm-at-step:K send itself SIGTERM during the K-th optimizer step of this process
  disk-full-WHERE:N the disk fills up during the N-th `last` checkpoint save of this process, at
                    WHERE (see `fill_disk`); the disk has room again for the next process
  disk-full-in-batch:K  taking this process's K-th batch fails with ENOSPC (as a full local
                    disk or /dev/shm would, on a rank that writes no checkpoint)
FAULT@R installs the fault on the torchrun rank R only (the environment's RANK).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# The tiny preset with a smaller patch (the fewest voxels the strides allow, doubled in z), one
# validation window per position, and short epochs: an epoch takes about a second on 2 cores.
# No postprocessing chosen at the end (test_training's `five_epochs` checks that it is).
FAST = ["--preset", "tiny", "--set", "data.patch_size=[16,16,8]", "--set", "inference.overlap=0",
        "--set", "inference.sw_batch_size=8", "--set", "inference.postprocess=false", "--quiet"]


def fast_args(data: Path, run: Path, *extra: str, steps: int = 2) -> list[str]:
    return ["train", "--data", str(data), "--run-dir", str(run), *FAST,
            "--set", f"training.steps_per_epoch={steps}", *extra]


def fast_options(steps: int = 2, **options: Any) -> dict[str, Any]:
    """The same configuration as keyword options of `ichseg.train`."""
    sets = [FAST[i + 1] for i, a in enumerate(FAST) if a == "--set"]
    return {"preset": "tiny", "quiet": True,
            "sets": [*sets, f"training.steps_per_epoch={steps}", *options.pop("sets", [])],
            **options}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_cli(args: list[str], fault: str | None = None, timeout: float = 240,
            ) -> subprocess.CompletedProcess:
    """`python -m ichseg ARGS` (or with a fault injected) to completion."""
    return subprocess.run(cli_command(args, fault), env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args: list[str], fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_command(args, fault), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def cli_command(args: list[str], fault: str | None) -> list[str]:
    """`python -m ichseg ARGS`, or this script injecting `fault` into it."""
    if fault is None:
        return [sys.executable, "-m", "ichseg", *args]
    return [sys.executable, __file__, fault, "--", *args]


def load_last(run: Path) -> dict[str, Any]:
    from ichseg.training.checkpoint import load_checkpoint_file

    return load_checkpoint_file(run / "checkpoints" / "last.pt")


# With the pooled Dice and its moving average (carried across a resume by the early-stopping state).
LOSS_COLUMNS = ("train_loss", "val_loss", "val_pooled_dice", "val_pooled_dice_smoothed")


def assert_same_training(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit-identical model and optimizer states (torch.equal on every tensor) and loss columns."""
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert_equal_tree(a["model_state"], b["model_state"], "model_state")
    assert_equal_tree(a["optimizer_state"], b["optimizer_state"], "optimizer_state")
    for column in LOSS_COLUMNS:
        # repr: exact digits, and a NaN (an epoch not validated) equals a NaN.
        assert list(map(repr, a["history"][column])) == list(map(repr, b["history"][column])), \
            column


def assert_equal_tree(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (links not followed) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# --- a disk that fills up -------------------------------------------------------------------

DISK_FULL_POINTS = ("checkpoint", "fsync", "manifest")


def fill_disk(where: str, active: Any = lambda: True) -> None:
    """Make the disk full at one point of a checkpoint save while `active()` holds, at the file
    layer (the `open` and `os.fsync` that `ichseg.fileio` calls), nothing mounted:
      checkpoint  writing a checkpoint's temporary file fails (ENOSPC) after its first 4 kB
      fsync       fsyncing a checkpoint's temporary file fails (ENOSPC)
      manifest    writing the manifest's temporary file fails (ENOSPC) after 100 bytes
    Permanent for the process (tests undo it with monkeypatch or end the process)."""
    from ichseg import fileio

    assert where in DISK_FULL_POINTS, where
    prefixes = (".manifest.json.",) if where == "manifest" else (".ckpt-", ".best-")
    room = 100 if where == "manifest" else 4096

    def targeted(name: str) -> bool:
        return active() and Path(name).name.startswith(prefixes)

    if where == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if targeted(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        os.fsync = fsync
    else:
        def filling_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            handle = open(file, *args, **kwargs)
            return _FillingFile(handle, room) if targeted(str(file)) else handle

        fileio.open = filling_open  # shadows the builtin in that module only


class _FillingFile:
    """An open file on a disk with `room` bytes left: the write that passes it lands in part and
    fails with ENOSPC."""

    def __init__(self, handle: Any, room: int):
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.handle.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.handle.name)
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


# --- the fault-injecting child ---------------------------------------------------------------

def _install_fault(fault: str) -> None:
    from ichseg.data import loader
    from ichseg.training import checkpoint, loop

    fault, _, rank = fault.partition("@")
    if rank and rank != os.environ.get("RANK", "0"):
        return
    kind, count = fault.split(":")
    target = int(count)
    calls = {"n": 0}

    def die(sig: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), sig)

    if kind == "kill-in-save":
        original_save = checkpoint.CheckpointManager.save
        original_write = checkpoint.files.HashingWriter.write

        def save(self, state):
            calls["n"] += 1
            return original_save(self, state)

        def write(self, data):
            written = original_write(self, data)
            if calls["n"] == target and self.size > 4096:
                die()  # the temporary file holds part of the checkpoint
            return written

        checkpoint.CheckpointManager.save = save
        checkpoint.files.HashingWriter.write = write
    elif kind == "kill-after-best":
        original_best = checkpoint.CheckpointManager.save_best

        def save_best(self, state):
            path = original_best(self, state)
            calls["n"] += 1
            if calls["n"] == target:
                die()
            return path

        checkpoint.CheckpointManager.save_best = save_best
    elif kind == "disk-full-in-batch":
        original_batches = loader.training_batches

        def training_batches(*args, **kwargs):
            for batch in original_batches(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == target:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                                  os.path.join(os.environ.get("TMPDIR", "/tmp"), "batch.tmp"))
                yield batch

        loader.training_batches = training_batches
    elif kind.startswith("disk-full-"):
        original_save = checkpoint.CheckpointManager.save

        def save(self, state):
            calls["n"] += 1
            return original_save(self, state)

        checkpoint.CheckpointManager.save = save
        fill_disk(kind.removeprefix("disk-full-"), lambda: calls["n"] == target)
    elif kind == "sigterm-at-step":
        original_step = loop.Trainer.train_step

        def train_step(self, images, labels):
            calls["n"] += 1
            if calls["n"] == target:
                die(signal.SIGTERM)  # the handler only sets the flag; the step completes
            return original_step(self, images, labels)

        loop.Trainer.train_step = train_step
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    fault_name, separator, *cli_args = sys.argv[1:]
    assert separator == "--"
    _install_fault(fault_name)
    from ichseg.cli import main

    raise SystemExit(main(cli_args))
