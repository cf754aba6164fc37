"""Exact continuation (CONTRACT.md, Determinism): a run stopped in any way and continued ends
bit-identical, on a CPU, to the same run never stopped; and damaged checkpoints fall back.

Every run here is `ichseg train` in a child process, the way a user (or a killed Colab runtime)
runs it; the reference is one uninterrupted child run of the same command.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import trainrun
from trainrun import assert_same_training, fast_args, load_last, run_cli, snapshot, start_cli

from ichseg.cli import main as cli_main
from ichseg.errors import UsageError
from ichseg.training.checkpoint import MANIFEST
from ichseg.training.modes import plan_run

EPOCHS = 3
STEPS = 3  # per epoch: 9 optimizer steps, a checkpoint after each


def exact_args(data: Path, run: Path, *extra: str) -> list[str]:
    return fast_args(data, run, "--epochs", str(EPOCHS), "--save-every-steps", "1", *extra,
                     steps=STEPS)


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never stopped."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli(exact_args(tiny_dataset, run))
    assert done.returncode == 0, done.stderr
    return run


def _generations(run: Path) -> int:
    return len(list((run / "checkpoints").glob("ckpt-*.pt")))


def _finish(data: Path, run: Path) -> str:
    done = run_cli(exact_args(data, run))
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_sigkill_at_random_moments_then_continue_is_bit_exact(tiny_dataset, reference, tmp_path):
    """Three SIGKILLs at random instants (each continuing a continued run), then the rest."""
    run = tmp_path / "run"
    rng = random.Random(4)
    kills = 0
    while kills < 3:
        before = _generations(run) if run.exists() else 0
        child = start_cli(exact_args(tiny_dataset, run))
        # Wait for this session's first checkpoint, then strike at a random instant after it.
        while child.poll() is None and (not run.exists() or _generations(run) == before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if child.poll() is not None:
            break  # it finished first: nothing more to kill
        child.send_signal(signal.SIGKILL)  # this child's own PID
        child.wait()
        kills += 1
    assert kills >= 2, "the run finished before it could be killed twice; make it longer"
    _finish(tiny_dataset, run)
    final = load_last(run)
    assert final["epoch"] == EPOCHS
    assert_same_training(final, load_last(reference))
    assert max(final["history"]["session"]) >= 2  # the history knows it was continued


def test_kill_during_a_checkpoint_write(tiny_dataset, reference, tmp_path):
    run = tmp_path / "run"
    killed = run_cli(exact_args(tiny_dataset, run), fault="kill-in-save:4")
    assert killed.returncode == -signal.SIGKILL
    leftovers = list((run / "checkpoints").glob(".*.tmp"))
    assert leftovers, "the kill should have left a half-written temporary file"
    before = load_last(run)
    assert before["step"] == 3  # the 4th save never committed: the 3rd is the newest
    log = _finish(tiny_dataset, run)
    assert "continuing" in log
    assert_same_training(load_last(run), load_last(reference))


def test_kill_right_after_a_best_save(tiny_dataset, reference, tmp_path):
    run = tmp_path / "run"
    killed = run_cli(exact_args(tiny_dataset, run), fault="kill-after-best:1")
    assert killed.returncode == -signal.SIGKILL
    _finish(tiny_dataset, run)
    assert_same_training(load_last(run), load_last(reference))


def test_sigterm_mid_epoch_saves_that_step_and_exits_0(tiny_dataset, reference, tmp_path):
    run = tmp_path / "run"
    # No periodic saves: the checkpoint at step 5 can only come from the stop request.
    args = fast_args(tiny_dataset, run, "--epochs", str(EPOCHS), "--save-every-steps", "0",
                     steps=STEPS)
    stopped = run_cli(args, fault="sigterm-at-step:5")
    assert stopped.returncode == 0, stopped.stderr
    assert "stop requested" in stopped.stderr
    saved = load_last(run)
    assert (saved["epoch"], saved["epoch_step"], saved["step"]) == (1, 2, 5)
    _finish(tiny_dataset, run)
    assert_same_training(load_last(run), load_last(reference))


def test_time_limit_stops_cleanly_and_continues_exactly(tiny_dataset, reference, tmp_path):
    run = tmp_path / "run"
    stopped = run_cli(exact_args(tiny_dataset, run, "--time-limit", "1s"))
    assert stopped.returncode == 0, stopped.stderr
    assert "time limit" in stopped.stderr
    assert load_last(run)["step"] < EPOCHS * STEPS
    done = run_cli(exact_args(tiny_dataset, run, "--time-limit", "10m"))
    assert done.returncode == 0, done.stderr
    assert_same_training(load_last(run), load_last(reference))


def test_two_trainers_on_one_folder(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    first = start_cli(fast_args(tiny_dataset, run, "--epochs", "100"))
    try:
        while not (run / "train.log").exists():  # the lock is taken before train.log
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.05)
        assert cli_main(fast_args(tiny_dataset, run, "--epochs", "100")) == 2
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# --- damaged checkpoints: the choice is made before anything is written -----------------------

@pytest.fixture
def damaged_copy(reference, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    return run


def _newest(run: Path) -> Path:
    return max((run / "checkpoints").glob("ckpt-*.pt"))


def _plan(data: Path, run: Path):
    return plan_run(data, run, epochs=EPOCHS + 1, **trainrun.fast_options(steps=STEPS))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_damaged_newest_checkpoint_falls_back(tiny_dataset, damaged_copy, damage, caplog):
    newest = _newest(damaged_copy)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        newest.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    with caplog.at_level(logging.WARNING):
        plan = _plan(tiny_dataset, damaged_copy)
    assert newest.name in caplog.text
    assert plan.checkpoint_path != newest
    assert plan.checkpoint["step"] == EPOCHS * STEPS - 1  # the generation before


def test_missing_manifest_uses_the_files_with_a_warning(tiny_dataset, damaged_copy, caplog):
    (damaged_copy / "checkpoints" / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        plan = _plan(tiny_dataset, damaged_copy)
    assert "manifest" in caplog.text
    assert plan.checkpoint["step"] == EPOCHS * STEPS


def test_all_checkpoints_bad_exits_2_and_touches_nothing(tiny_dataset, damaged_copy, capsys):
    for path in (damaged_copy / "checkpoints").glob("ckpt-*.pt"):
        path.write_bytes(path.read_bytes()[:100])
    before = snapshot(damaged_copy)
    with pytest.raises(UsageError, match="no valid checkpoint"):
        _plan(tiny_dataset, damaged_copy)
    assert cli_main(exact_args(tiny_dataset, damaged_copy)) == 2
    assert "no valid checkpoint" in capsys.readouterr().err
    assert snapshot(damaged_copy) == before
