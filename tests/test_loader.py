"""Batches prepared ahead by DataLoader workers, and validation every N epochs: the number of
workers never changes what is trained, a run killed with workers continues bit-exactly, and
epochs without validation leave gaps that the history, plot and status handle."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from test_sampling import config, make_cases
from trainrun import assert_same_training, fast_args, load_last, run_cli

from ichseg.data.loader import resolve_workers, training_batches
from ichseg.data.sampling import PatchSampler
from ichseg.training.status import format_status, training_status

EPOCHS = 3
STEPS = 3


def loader_args(data: Path, run: Path, workers: int) -> list[str]:
    # Augmentation on (rotations and scaling run torch code in the workers), validation every
    # second epoch and after the last one: epochs 2 and 3.
    return fast_args(data, run, "--epochs", str(EPOCHS), "--save-every-steps", "1",
                     "--set", "data.augment=true", "--set", "training.validate_every=2",
                     "--set", f"data.num_workers={workers}", steps=STEPS)


@pytest.fixture(scope="module")
def no_workers(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run with batches made on the training thread, never stopped."""
    run = tmp_path_factory.mktemp("loader") / "run"
    done = run_cli(loader_args(tiny_dataset, run, 0))
    assert done.returncode == 0, done.stderr
    assert "could not draw" not in done.stderr
    return run


def test_a_run_killed_with_two_workers_continues_like_one_without_workers(tiny_dataset,
                                                                         no_workers, tmp_path):
    run = tmp_path / "run"
    # SIGKILL halfway through the 5th save (step 5, mid-epoch 2), while the workers hold
    # batches prepared ahead; the continuation must start from the saved step, not theirs.
    killed = run_cli(loader_args(tiny_dataset, run, 2), fault="kill-in-save:5")
    assert killed.returncode == -9
    assert load_last(run)["step"] == 4
    done = run_cli(loader_args(tiny_dataset, run, 2))
    assert done.returncode == 0, done.stderr
    assert_same_training(load_last(run), load_last(no_workers))


def test_epochs_without_validation_leave_gaps_the_history_and_status_handle(no_workers):
    state = load_last(no_workers)
    val_loss = state["history"]["val_loss"]
    assert math.isnan(val_loss[0]) and not math.isnan(val_loss[1]) and not math.isnan(val_loss[2])
    assert "nan" in (no_workers / "history.csv").read_text().splitlines()[1]
    assert (no_workers / "progress.png").stat().st_size > 0
    # Patience counts validations: two of them, so at most one without improvement.
    assert state["no_improve"] <= 1
    assert state["early_stopping"]["best_epoch"] in (2, 3)
    assert "smoothed pooled Dice" in format_status(training_status(no_workers))


class _PidSampler(PatchSampler):
    """Batches whose labels are replaced by the PID of the process that made them."""

    def batch(self, epoch, step, rank=0, world_size=1):
        images, _ = super().batch(epoch, step, rank, world_size)
        return images, torch.tensor(os.getpid())


def test_workers_serve_the_samplers_batches_across_an_epoch_end():
    cfg = config(batch_size=2)
    cfg.training.steps_per_epoch = 3
    cfg.data.num_workers = 2
    sampler = _PidSampler(make_cases(), cfg, seed=0)
    served = list(training_batches(sampler, cfg, torch.device("cpu"), epoch=4, start_step=2,
                                   steps=4))
    # Step 2 of epoch 4, then steps 0, 1, 2 of epoch 5.
    expected = [sampler.batch(4, 2), *(sampler.batch(5, s) for s in range(3))]
    assert len(served) == len(expected)
    for (images, pid), (want, _) in zip(served, expected, strict=True):
        assert torch.equal(images, want)
        assert int(pid) != os.getpid()  # made in a worker process


def test_auto_workers_only_on_cuda():
    assert resolve_workers(-1, torch.device("cpu")) == 0
    assert resolve_workers(-1, torch.device("cuda")) >= 1
    assert resolve_workers(3, torch.device("cpu")) == 3
