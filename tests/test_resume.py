"""Exact continuation (docs/CONTRACT.md, Determinism): a run stopped in any way and continued ends
bit-identical, on a CPU, to the same run never stopped; and damaged checkpoints fall back.

Every run here is `ichseg train` in a child process, the way a user (or a killed Colab runtime)
runs it; the reference is one uninterrupted child run of the same command.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import trainrun
from trainrun import assert_same_training, fast_args, load_last, run_cli, snapshot, start_cli

from ichseg import fileio
from ichseg.cli import main as cli_main
from ichseg.errors import UsageError
from ichseg.training.checkpoint import MANIFEST, CheckpointManager, load_checkpoint_file
from ichseg.training.lock import RunLock
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
    """Two SIGKILLs at random instants (the second one kills a continued run), then the rest."""
    run = tmp_path / "run"
    rng = random.Random(4)
    kills = 0
    while kills < 2:
        before = _generations(run) if run.exists() else 0
        child = start_cli(exact_args(tiny_dataset, run))
        # Wait for this session's first checkpoint, then strike at a random instant after it:
        # within half a second, which here spans several steps and saves (a tiny step with its
        # save takes about 0.1 s), and leaves the run unfinished on faster machines too.
        while child.poll() is None and (not run.exists() or _generations(run) == before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if child.poll() is not None:
            break  # it finished first: nothing more to kill
        child.send_signal(signal.SIGKILL)  # this child's own PID
        child.wait()
        kills += 1
    assert kills == 2, "the run finished before it could be killed twice; make it longer"
    _finish(tiny_dataset, run)
    final = load_last(run)
    assert final["epoch"] == EPOCHS
    assert_same_training(final, load_last(reference))
    assert final["history"]["session"][-1] == 3  # the history knows it was continued twice


def test_a_run_stopped_every_way_in_turn_ends_bit_exact(tiny_dataset, reference, tmp_path):
    """Each stage continues the one before: kill after a best-save, kill inside a checkpoint
    write, SIGTERM mid-epoch, the time limit; then the run finishes like the reference."""
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"

    # 1. SIGKILL right after epoch 1's best model is committed, before its `last` save.
    killed = run_cli(exact_args(tiny_dataset, run), fault="kill-after-best:1")
    assert killed.returncode == -signal.SIGKILL
    assert load_last(run)["step"] == 2
    assert load_checkpoint_file(checkpoints / "best.pt")["epoch"] == 1

    # 2. SIGKILL halfway through writing a checkpoint (this session's 2nd save, at step 4).
    killed = run_cli(exact_args(tiny_dataset, run), fault="kill-in-save:2")
    assert killed.returncode == -signal.SIGKILL
    assert list(checkpoints.glob(".*.tmp")), "the kill should leave a half-written temp file"
    assert load_last(run)["step"] == 3  # the half-written one never became a generation

    # 3. SIGTERM during this session's 2nd step (step 5), no periodic saves: the stop saves.
    stopped = run_cli(fast_args(tiny_dataset, run, "--save-every-steps", "0", steps=STEPS),
                      fault="sigterm-at-step:2")
    assert stopped.returncode == 0, stopped.stderr
    assert "stop requested" in stopped.stderr
    saved = load_last(run)
    assert (saved["epoch"], saved["epoch_step"], saved["step"]) == (1, 2, 5)

    # 4. A time limit too short for more than a step: saves and exits 0 before the end.
    stopped = run_cli(exact_args(tiny_dataset, run, "--time-limit", "1s"))
    assert stopped.returncode == 0, stopped.stderr
    assert "time limit reached" in stopped.stderr
    assert 5 < load_last(run)["step"] < EPOCHS * STEPS

    # 5. The rest: the same command without the limit (a continue does not inherit it).
    _finish(tiny_dataset, run)
    final = load_last(run)
    assert_same_training(final, load_last(reference))
    assert final["history"]["session"][-1] == 5


def _listed_generations_verify(run: Path) -> None:
    rows = CheckpointManager(run / "checkpoints").generations()
    assert rows and all(row["verdict"] == "ok" for row in rows), rows
    assert not [p for p in run.rglob("*") if fileio.is_temp(p.name)]


def test_a_full_disk_at_each_point_of_a_save_and_damaged_run_files_then_continue_is_bit_exact(
        tiny_dataset, reference, tmp_path):
    """The disk fills during this session's 2nd `last` save, at each point of it in turn (each
    stage continues the one before): exit 1 with one message and no traceback, every listed
    generation verifying. Then, with config.yaml truncated and split.json garbage, the same
    command rebuilds both from the checkpoint and finishes like the reference."""
    run = tmp_path / "run"
    saved_steps = []
    for where in trainrun.DISK_FULL_POINTS:
        full = run_cli(exact_args(tiny_dataset, run), fault=f"disk-full-{where}:2")
        assert full.returncode == 1, full.stderr
        assert "Traceback" not in full.stderr
        errors = [line for line in full.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, full.stderr
        assert str(run / "checkpoints") in errors[0] and "free" in errors[0], errors[0]
        _listed_generations_verify(run)
        saved_steps.append(load_last(run)["step"])
    assert saved_steps == [1, 2, 3]  # each session's 1st save committed, its 2nd not

    config, split = run / "config.yaml", run / "split.json"
    config.write_text(config.read_text()[: len(config.read_text()) // 2])
    split.write_bytes(b"\x00\xff garbage")
    stderr = _finish(tiny_dataset, run)
    assert "config.yaml is damaged" in stderr and "split.json cannot be read" in stderr
    assert_same_training(load_last(run), load_last(reference))
    assert json.loads(split.read_text()) == json.loads((reference / "split.json").read_text())
    assert config.read_text() == (reference / "config.yaml").read_text()


def test_a_second_trainer_on_the_same_folder_exits_2(tiny_dataset, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    before = snapshot(run)
    with RunLock(run):  # what a live trainer holds (this process is alive)
        assert cli_main(fast_args(tiny_dataset, run, "--epochs", "5", steps=STEPS)) == 2
    assert f"in use by PID {os.getpid()}" in capsys.readouterr().err
    assert snapshot(run) == before


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


def test_a_continue_does_not_inherit_quiet_or_the_time_limit(tiny_dataset, damaged_copy):
    saved = damaged_copy / "config.yaml"
    saved.write_text(saved.read_text().replace("time_limit: ''", "time_limit: 1h"))
    assert "quiet: true" in saved.read_text() and "time_limit: 1h" in saved.read_text()
    options = trainrun.fast_options(steps=STEPS)
    options["quiet"] = False
    plan = plan_run(tiny_dataset, damaged_copy, epochs=EPOCHS + 1, **options)
    assert (plan.cfg.training.quiet, plan.cfg.training.time_limit) == (False, "")


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


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing keys"])
def test_a_damaged_config_is_rebuilt_from_the_checkpoint(tiny_dataset, reference, damaged_copy,
                                                         damage, caplog):
    config = damaged_copy / "config.yaml"
    text = config.read_text()
    config.write_text({"truncated": text[: len(text) // 3], "garbage": "\x00: [\n{{",
                       "missing keys": text.split("inference:")[0]}[damage])
    with caplog.at_level(logging.WARNING):
        plan = _plan(tiny_dataset, damaged_copy)
    assert "config.yaml is damaged" in caplog.text
    expected = _plan(tiny_dataset, reference)
    assert plan.cfg.to_dict() == expected.cfg.to_dict()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_split_is_rebuilt_as_the_run_made_it(tiny_dataset, damaged_copy, damage,
                                                       caplog):
    split = damaged_copy / "split.json"
    made = json.loads(split.read_text())
    split.write_text(split.read_text()[:20] if damage == "truncated" else "[1, 2")
    with caplog.at_level(logging.WARNING):
        plan = _plan(tiny_dataset, damaged_copy)
    assert "split.json cannot be read" in caplog.text
    assert plan.split == made


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_lost_split_comes_back_from_the_checkpoint_though_the_dataset_grew(
        tiny_dataset, damaged_copy, tmp_path, damage, caplog):
    # Rebuilding from the dataset would now give another split: the checkpoint's is the truth.
    grown = tmp_path / "grown"
    shutil.copytree(tiny_dataset, grown)
    for kind in ("images", "labels"):
        shutil.copy(grown / kind / "synth_000.nii.gz", grown / kind / "synth_new.nii.gz")
    split = damaged_copy / "split.json"
    made = json.loads(split.read_text())
    if damage == "missing":
        split.unlink()
    else:
        split.write_text("[1, 2")
    with caplog.at_level(logging.WARNING):
        plan = _plan(grown, damaged_copy)
    assert "restored from the checkpoint" in caplog.text
    assert plan.split == made
    assert "synth_new" not in plan.split["train"] + plan.split["validation"]


def test_a_damaged_config_without_a_checkpoint_exits_2(tiny_dataset, damaged_copy, capsys):
    shutil.rmtree(damaged_copy / "checkpoints")
    (damaged_copy / "config.yaml").write_text("data: {path: [")
    before = snapshot(damaged_copy)
    assert cli_main(exact_args(tiny_dataset, damaged_copy)) == 2
    assert "config.yaml is damaged" in capsys.readouterr().err
    assert snapshot(damaged_copy) == before

