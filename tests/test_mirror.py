"""The checkpoint mirror (`--mirror-dir`, e.g. Google Drive): background, verified, never fatal."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch

from ichseg.errors import UsageError
from ichseg.training import checkpoint as ck
from ichseg.training.checkpoint import CheckpointManager


def state_for(value: int) -> dict:
    return {"epoch": value, "step": 10 * value, "model_state": {"w": torch.full((5000,),
                                                                               float(value))}}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "run" / "checkpoints", tmp_path / "drive" / "run1"


def check_local_intact(local: Path, values: range) -> None:
    """The local folder holds verified generations of the last values saved."""
    manager = CheckpointManager(local)
    assert [row["verdict"] for row in manager.generations()] == ["ok"] * len(values)
    assert manager.load_latest().state["epoch"] == values[-1]


def test_the_mirror_receives_verified_generations_and_its_own_manifest(dirs):
    local, mirror = dirs
    with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
        for value in (1, 2, 3):
            manager.save(state_for(value))
            assert manager.wait(timeout=60)
        manager.save_best(state_for(3))
    assert listing(mirror) == ["best-000004.pt", "best.pt", "ckpt-000002.pt", "ckpt-000003.pt",
                               "last.pt", "manifest.json"]
    assert json.loads((mirror / "manifest.json").read_text()) == \
        json.loads((local / "manifest.json").read_text())
    for name in ("ckpt-000003.pt", "best-000004.pt"):
        assert (mirror / name).read_bytes() == (local / name).read_bytes()
    rows = CheckpointManager(local, mirror_dir=mirror).generations()
    assert {(r["location"], r["file"], r["verdict"]) for r in rows} >= {
        ("mirror", "ckpt-000003.pt", "ok"), ("local", "ckpt-000003.pt", "ok")}


def test_a_full_mirror_is_said_once_and_catches_up_when_there_is_room(dirs, monkeypatch, caplog):
    local, mirror = dirs
    copy = ck.files.copy_file
    room = {"saves": 0}

    def full_until_the_fourth(src, dst):
        dst.write(src.read(3000))
        if room["saves"] < 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        copy(src, dst)

    monkeypatch.setattr(ck.files, "copy_file", full_until_the_fourth)
    with caplog.at_level(logging.WARNING):
        with CheckpointManager(local, mirror_dir=mirror) as manager:
            for value in (1, 2, 3):
                room["saves"] = value
                manager.save(state_for(value))
                manager.wait(timeout=60)
            check_local_intact(local, range(1, 4))
            assert caplog.text.count("is full") == 1  # three failed copies, one warning
            assert "No space left on device" in caplog.text
            assert listing(mirror) == []  # no temp file left behind either
            room["saves"] = 4
            manager.save(state_for(4))
    rows = CheckpointManager(local, mirror_dir=mirror).generations()
    assert ("mirror", "ckpt-000004.pt", "ok") in {(r["location"], r["file"], r["verdict"])
                                                  for r in rows}


def test_a_mirror_that_vanishes_mid_copy_costs_a_warning_only(dirs, monkeypatch, caplog):
    local, mirror = dirs

    def vanish(src, dst):
        dst.write(b"partial")
        shutil.rmtree(mirror)  # Drive unmounted under our feet

    monkeypatch.setattr(ck.files, "copy_file", vanish)
    with caplog.at_level(logging.WARNING):
        with CheckpointManager(local, mirror_dir=mirror) as manager:
            manager.save(state_for(1))
            manager.wait(timeout=60)
            manager.save(state_for(2))
    check_local_intact(local, range(1, 3))
    assert "could not mirror checkpoint ckpt-000002.pt" in caplog.text


def test_a_truncated_copy_fails_verification_and_is_never_committed(dirs, monkeypatch, caplog):
    local, mirror = dirs

    def truncated(src, dst):
        dst.write(src.read(1000))

    monkeypatch.setattr(ck.files, "copy_file", truncated)
    with caplog.at_level(logging.WARNING):
        with CheckpointManager(local, mirror_dir=mirror) as manager:
            manager.save(state_for(1))
    assert "does not match its SHA-256" in caplog.text
    assert listing(mirror) == []  # neither the bad copy nor a manifest naming it
    check_local_intact(local, range(1, 2))


def test_a_slow_mirror_never_blocks_saves_and_newer_generations_supersede_queued_ones(
        dirs, monkeypatch, caplog):
    local, mirror = dirs
    copy = ck.files.copy_file
    started, release = threading.Event(), threading.Event()
    copied: list[str] = []

    def slow(src, dst):
        started.set()
        release.wait(timeout=120)  # the mirror hangs until the test lets it go
        copied.append(Path(src.name).name)
        copy(src, dst)

    monkeypatch.setattr(ck.files, "copy_file", slow)
    manager = CheckpointManager(local, keep=3, mirror_dir=mirror)
    manager.save(state_for(1))
    assert started.wait(timeout=60)
    # The copy of generation 1 is stuck: these saves complete anyway (they would hang otherwise).
    for value in (2, 3, 4):
        manager.save(state_for(value))
    check_local_intact(local, range(2, 5))
    with caplog.at_level(logging.WARNING):
        assert manager.wait(timeout=0.2) is False
    assert "is still copying" in caplog.text
    release.set()
    assert manager.close(timeout=60)
    assert copied == ["ckpt-000001.pt", "ckpt-000004.pt"]  # 2 and 3 were superseded in the queue
    assert listing(mirror) == ["ckpt-000001.pt", "ckpt-000004.pt", "last.pt", "manifest.json"]


def test_a_run_whose_local_folder_is_gone_resumes_from_the_mirror(dirs, caplog):
    local, mirror = dirs
    with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
        for value in (1, 2, 3):
            manager.save(state_for(value))
            manager.wait(timeout=60)
    shutil.rmtree(local.parent)  # a fresh Colab runtime: nothing on the local disk

    manager = CheckpointManager(local, keep=2, mirror_dir=mirror)
    peek = manager.load_latest(copy_back=False)  # before the run lock: reads only
    assert peek.path == mirror / "ckpt-000003.pt" and not local.exists()
    with caplog.at_level(logging.WARNING):
        loaded = manager.load_latest()
    assert loaded.source == "mirror" and loaded.state["epoch"] == 3 and loaded.verified
    assert torch.equal(loaded.state["model_state"]["w"], torch.full((5000,), 3.0))
    assert "resuming from the mirror" in caplog.text
    # copied home first, so the run continues locally with the next number
    assert loaded.path == local / "ckpt-000003.pt"
    assert (local / "ckpt-000003.pt").read_bytes() == (mirror / "ckpt-000003.pt").read_bytes()
    assert manager.save(state_for(4)).name == "ckpt-000004.pt"
    manager.close(timeout=60)
    assert CheckpointManager(local, mirror_dir=mirror).load_latest().source == "local"


def test_the_newer_of_local_and_mirror_wins(dirs):
    local, mirror = dirs
    with CheckpointManager(local, keep=3, mirror_dir=mirror) as manager:
        manager.save(state_for(1))
        manager.wait(timeout=60)
    with CheckpointManager(local, keep=3) as manager:  # a later session without the mirror
        manager.save(state_for(2))
    loaded = CheckpointManager(local, mirror_dir=mirror).load_latest()
    assert loaded.source == "local" and loaded.state["epoch"] == 2
    # with every local generation damaged or gone, the mirror's older one is next best
    (local / "ckpt-000002.pt").write_bytes(b"broken")
    (local / "ckpt-000001.pt").unlink()
    loaded = CheckpointManager(local, mirror_dir=mirror).load_latest()
    assert loaded.source == "mirror" and loaded.state["epoch"] == 1


def test_archiving_the_mirror_moves_the_old_run_aside(dirs):
    local, mirror = dirs
    with CheckpointManager(local, mirror_dir=mirror) as manager:
        manager.save(state_for(5))
    shutil.rmtree(local)  # `--mode new` moved the local run to RUN/archive/
    target = CheckpointManager(local, mirror_dir=mirror).archive_mirror("20260101T000000Z")
    assert listing(mirror) == ["archive"]
    assert listing(target) == ["ckpt-000001.pt", "last.pt", "manifest.json"]
    # the old run's generation can no longer win a later continue
    assert CheckpointManager(local, mirror_dir=mirror).load_latest() is None


def test_the_mirror_cannot_be_the_checkpoint_folder_itself(dirs):
    local, _ = dirs
    with pytest.raises(UsageError, match=f"--mirror-dir {local} is the run's own checkpoint"):
        CheckpointManager(local, mirror_dir=local)
    assert not local.exists()


def test_a_mirror_further_along_than_the_run_is_set_aside_not_pruned(dirs, caplog):
    local, mirror = dirs
    with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
        for value in (5, 6):
            manager.save(state_for(value))
            manager.wait(timeout=60)
    old = {name: (mirror / name).read_bytes() for name in ("ckpt-000001.pt", "ckpt-000002.pt")}
    shutil.rmtree(local)
    # a run that starts over without resuming from the mirror (e.g. a continue that ignored it)
    with caplog.at_level(logging.WARNING):
        with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
            manager.save(state_for(1))
    (archived,) = (mirror / "archive").iterdir()
    assert {name: (archived / name).read_bytes() for name in old} == old
    assert "held a run further along (step 60) than this one (step 10)" in caplog.text
    assert [g["file"] for g in json.loads((mirror / "manifest.json").read_text())["generations"]] \
        == ["ckpt-000003.pt"]


def test_a_normal_continuation_does_not_set_the_mirror_aside(dirs):
    local, mirror = dirs
    with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
        manager.save(state_for(1))
    with CheckpointManager(local, keep=2, mirror_dir=mirror) as manager:
        manager.load_latest()
        manager.save(state_for(2))
    assert not (mirror / "archive").exists()
    assert listing(mirror) == ["ckpt-000001.pt", "ckpt-000002.pt", "last.pt", "manifest.json"]
