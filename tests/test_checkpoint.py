"""Checkpoint generations: atomic writes, the SHA-256 manifest, retention, fallback, kills."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trainrun

from ichseg import fileio
from ichseg.errors import DiskFull, UsageError
from ichseg.training import checkpoint as ck
from ichseg.training.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    is_legacy,
    load_checkpoint_file,
    model_state_from,
    restore_rng_state,
)


def state_for(value: int, size: int = 1000) -> dict:
    """A checkpoint-like state whose every part can be checked against `value`."""
    return {"epoch": value, "step": 10 * value, "format_version": ck.FORMAT_VERSION,
            "model_state": {"w": torch.full((size,), float(value))},
            "history": {"train_loss": [float(v) for v in range(value)]}}


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry of a folder: a link's target, or a file's bytes."""
    return {p.name: (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(directory.iterdir())}


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def flip_byte_in_tensor_data(path: Path) -> None:
    """Flip one byte inside the stored tensor data (not the zip headers)."""
    data = bytearray(path.read_bytes())
    marker = data.find(b"data/0")  # the first tensor's record; its bytes follow the header
    assert marker > 0
    data[marker + 200] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def ckdir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


def test_save_commits_generations_with_their_sha256_and_no_temp_files(ckdir: Path):
    manager = CheckpointManager(ckdir, keep=3)
    paths = [manager.save(state_for(v)) for v in (1, 2)]
    assert [p.name for p in paths] == ["ckpt-000001.pt", "ckpt-000002.pt"]
    assert sorted(os.listdir(ckdir)) == ["ckpt-000001.pt", "ckpt-000002.pt", "last.pt",
                                         "manifest.json"]
    recorded = manifest(ckdir)["generations"]
    for entry, path, value in zip(recorded, paths, (1, 2), strict=True):
        assert entry["file"] == path.name
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size
        assert (entry["epoch"], entry["step"]) == (value, 10 * value)
    assert os.readlink(ckdir / "last.pt") == "ckpt-000002.pt"  # relative: the run folder moves
    loaded = manager.load_latest()
    assert loaded.path == paths[1] and loaded.verified and loaded.source == "local"
    assert torch.equal(loaded.state["model_state"]["w"], torch.full((1000,), 2.0))


def test_numbers_continue_across_managers_and_best_is_recorded(ckdir: Path):
    CheckpointManager(ckdir).save(state_for(1))
    manager = CheckpointManager(ckdir)
    assert manager.save_best(state_for(1)).name == "best-000002.pt"
    assert manager.save(state_for(2)).name == "ckpt-000003.pt"
    assert manager.save_best(state_for(2)).name == "best-000004.pt"
    assert not (ckdir / "best-000002.pt").exists()  # only the newest best is kept
    assert os.readlink(ckdir / "best.pt") == "best-000004.pt"
    best = manifest(ckdir)["best"]
    assert best["file"] == "best-000004.pt" and best["epoch"] == 2
    assert load_checkpoint_file(ckdir / "best.pt")["epoch"] == 2
    # best files are never mistaken for training states to resume from
    assert manager.load_latest().path.name == "ckpt-000003.pt"


def test_retention_keeps_the_newest_k(ckdir: Path):
    manager = CheckpointManager(ckdir, keep=2)
    for value in range(1, 6):
        manager.save(state_for(value))
    assert sorted(p.name for p in ckdir.glob("ckpt-*.pt")) == ["ckpt-000004.pt", "ckpt-000005.pt"]
    assert [g["file"] for g in manifest(ckdir)["generations"]] == ["ckpt-000004.pt",
                                                                    "ckpt-000005.pt"]


def test_nothing_older_is_deleted_when_the_new_file_does_not_verify(ckdir, monkeypatch):
    manager = CheckpointManager(ckdir, keep=1)
    manager.save(state_for(1))
    before = snapshot(ckdir)
    monkeypatch.setattr(ck.files, "sha256_file", lambda path: "0" * 64)  # the re-read disagrees
    with pytest.raises(OSError, match="ckpt-000002.pt read back with a different SHA-256"):
        manager.save(state_for(2))
    assert snapshot(ckdir) == before


def test_a_failed_write_leaves_no_temp_file_and_the_previous_generation(ckdir: Path):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    before = snapshot(ckdir)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails with several types
        manager.save({"epoch": 2, "step": 20, "bad": lambda: None})
    assert snapshot(ckdir) == before


@pytest.mark.parametrize("where", trainrun.DISK_FULL_POINTS)
def test_a_full_disk_at_any_point_of_a_save_keeps_every_listed_generation(ckdir, monkeypatch,
                                                                          where):
    manager = CheckpointManager(ckdir, keep=2)
    for value in (1, 2):
        manager.save(state_for(value, size=5000))
    before = snapshot(ckdir)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", os.fsync)  # undone with the context
        patch.setattr(fileio, "open", open, raising=False)
        trainrun.fill_disk(where)
        with pytest.raises(DiskFull) as caught:
            manager.save(state_for(3, size=5000))
    message = str(caught.value)
    assert str(ckdir) in message and "ckpt-000003.pt" in message
    assert "needed about 20.0 KB" in message and " free" in message
    # Nothing changed: no temporary file, no uncommitted generation, the manifest as it was.
    assert snapshot(ckdir) == before
    assert [row["verdict"] for row in manager.generations()] == ["ok", "ok"]
    # Once there is room again, saving goes on with the next number.
    assert manager.save(state_for(4)).name == "ckpt-000004.pt"
    assert CheckpointManager(ckdir).load_latest().state["epoch"] == 4


def test_stale_temp_files_of_a_crashed_process_are_cleaned_on_the_next_save(ckdir: Path):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    leftover = ckdir / ".ckpt-000002.pt.99999999.1.tmp"
    leftover.write_bytes(b"half a checkpoint")
    manager.save(state_for(2))
    assert not leftover.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "garbage"])
def test_a_bad_newest_generation_falls_back_to_the_previous(ckdir, caplog, damage):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    newest = manager.save(state_for(2, size=100_000))
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "flip":
        flip_byte_in_tensor_data(newest)
        # torch itself does not notice: only the checksum protects us
        silently = torch.load(newest, weights_only=True)["model_state"]["w"]
        assert not torch.equal(silently, torch.full((100_000,), 2.0))
    elif damage == "delete":
        newest.unlink()
    else:
        newest.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        loaded = CheckpointManager(ckdir).load_latest()
    assert loaded.state["epoch"] == 1
    verdict = {"truncate": "checksum mismatch", "flip": "checksum mismatch",
               "delete": "missing", "garbage": "checksum mismatch"}[damage]
    assert f"{newest} is not usable: {verdict}" in caplog.text
    rows = {r["file"]: r["verdict"] for r in manager.generations()}
    assert rows == {"ckpt-000001.pt": "ok", newest.name: verdict}


def test_a_missing_manifest_falls_back_to_the_files_with_a_warning(ckdir, caplog):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    newest = manager.save(state_for(2))
    (ckdir / "manifest.json").unlink()
    newest.write_bytes(newest.read_bytes()[:500])  # and the newest file is unreadable too
    with caplog.at_level(logging.WARNING):
        loaded = CheckpointManager(ckdir).load_latest()
    assert loaded.state["epoch"] == 1 and not loaded.verified
    assert "checksums of its checkpoints cannot be verified" in caplog.text
    assert f"{newest} is not usable: unreadable" in caplog.text
    rows = CheckpointManager(ckdir).generations()
    assert [(r["file"], r["verdict"]) for r in rows] == [
        ("ckpt-000002.pt", "unverified (no manifest)"), ("ckpt-000001.pt", "unverified (no manifest)")]


def test_a_corrupt_manifest_is_treated_like_a_missing_one(ckdir, caplog):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    (ckdir / "manifest.json").write_text("{ half")
    with caplog.at_level(logging.WARNING):
        loaded = manager.load_latest()
    assert loaded.state["epoch"] == 1 and not loaded.verified
    assert "manifest.json cannot be read" in caplog.text


def test_saving_after_a_lost_manifest_adopts_the_files_instead_of_deleting_them(ckdir, caplog):
    manager = CheckpointManager(ckdir, keep=3)
    manager.save(state_for(1))
    manager.save(state_for(2))
    (ckdir / "manifest.json").write_text("garbage")
    manager = CheckpointManager(ckdir, keep=3)
    with caplog.at_level(logging.WARNING):
        manager.save(state_for(3))
    assert "writing a new one that adopts the files present" in caplog.text
    generations = manifest(ckdir)["generations"]
    assert [(g["file"], g.get("adopted", False)) for g in generations] == [
        ("ckpt-000001.pt", True), ("ckpt-000002.pt", True), ("ckpt-000003.pt", False)]
    manager.save(state_for(4))  # from here on, ordinary retention
    assert sorted(p.name for p in ckdir.glob("ckpt-*.pt")) == [
        "ckpt-000002.pt", "ckpt-000003.pt", "ckpt-000004.pt"]


def test_uncommitted_files_are_ignored_and_cleaned_up(ckdir: Path):
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    # a kill after the rename but before the manifest: complete, but never committed
    (ckdir / "ckpt-000002.pt").write_bytes((ckdir / "ckpt-000001.pt").read_bytes())
    assert manager.load_latest().path.name == "ckpt-000001.pt"
    assert CheckpointManager(ckdir).save(state_for(3)).name == "ckpt-000003.pt"
    assert not (ckdir / "ckpt-000002.pt").exists()


def test_a_legacy_checkpoint_with_numpy_numbers_loads_but_object_arrays_do_not(tmp_path):
    legacy = tmp_path / "checkpoint.pth"
    torch.save({"model_state": {"w": torch.ones(2)}, "epoch": 1500,
                "history": {"val_loss": [np.float64(0.5)], "dice": np.arange(3.0)},
                "best_val": np.float32(0.25), "no_improve": 3, "optimizer_state": {},
                "scheduler_state": {}, "scaler_state": None}, legacy)
    loaded = load_checkpoint_file(legacy)
    assert is_legacy(loaded) and loaded["best_val"] == np.float32(0.25)
    assert loaded["history"]["dice"].tolist() == [0.0, 1.0, 2.0]
    objects = tmp_path / "objects.pth"
    torch.save({"model_state": {}, "x": np.array([{"a": 1}], dtype=object)}, objects)
    with pytest.raises(UsageError, match="objects.pth is not usable: refused"):
        load_checkpoint_file(objects)


def test_all_generations_bad_raises_and_touches_nothing(ckdir: Path):
    manager = CheckpointManager(ckdir)
    paths = [manager.save(state_for(v)) for v in (1, 2)]
    paths[0].write_bytes(paths[0].read_bytes()[:100])
    flip_byte_in_tensor_data(paths[1])
    before = snapshot(ckdir)
    with pytest.raises(UsageError) as err:
        CheckpointManager(ckdir).load_latest()
    message = str(err.value)
    assert str(ckdir) in message and all(str(p) in message for p in paths)
    assert snapshot(ckdir) == before


def test_no_checkpoint_at_all_is_none(tmp_path: Path):
    assert CheckpointManager(tmp_path / "absent").load_latest() is None
    (tmp_path / "empty").mkdir()
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


class RunsCode:
    """A pickle payload that would create `marker` if it were ever executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "code-ran"
    raw = tmp_path / "plain-pickle.pt"
    raw.write_bytes(pickle.dumps({"model_state": RunsCode(marker)}, protocol=2))
    via_torch = tmp_path / "torch-save.pt"
    torch.save({"model_state": {"w": torch.ones(2)}, "payload": RunsCode(marker)}, via_torch)
    for path in (raw, via_torch):
        with pytest.raises(UsageError, match=f"checkpoint file {path} .*could run code"):
            load_checkpoint_file(path)
    assert not marker.exists()


def test_a_malicious_generation_with_a_matching_checksum_is_skipped(ckdir, tmp_path):
    marker = tmp_path / "code-ran"
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    bad = manager.save({"epoch": 2, "step": 20, "payload": RunsCode(marker)})
    assert manager.load_latest().state["epoch"] == 1
    assert bad.exists() and not marker.exists()


def test_load_checkpoint_file_checks_the_manifest_beside_it(ckdir: Path):
    manager = CheckpointManager(ckdir)
    path = manager.save(state_for(1))
    assert load_checkpoint_file(ckdir / "last.pt")["epoch"] == 1
    flip_byte_in_tensor_data(path)
    for name in (path.name, "last.pt"):
        with pytest.raises(UsageError, match="does not match the SHA-256"):
            load_checkpoint_file(ckdir / name)
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint_file(ckdir / "nope.pt")


def test_aliases_are_verified_copies_where_links_are_unsupported(ckdir, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("operation not permitted")

    monkeypatch.setattr(os, "symlink", no_links)
    manager = CheckpointManager(ckdir)
    manager.save(state_for(1))
    manager.save(state_for(2))
    last = ckdir / "last.pt"
    assert not last.is_symlink() and last.read_bytes() == (ckdir / "ckpt-000002.pt").read_bytes()
    assert load_checkpoint_file(last)["epoch"] == 2
    last.write_bytes(last.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UsageError, match="last.pt does not match"):
        load_checkpoint_file(last)


def test_is_legacy_and_model_state_from():
    legacy = {k: None for k in ck.LEGACY_KEYS} | {"model_state": {"w": torch.ones(1)}}
    assert is_legacy(legacy)
    assert not is_legacy(legacy | {"format_version": 1, "step": 3, "rng": {}})
    assert not is_legacy({"epoch": 1})
    assert model_state_from(legacy) is legacy["model_state"]
    bare = {"conv.weight": torch.ones(1)}
    assert model_state_from(bare) is bare
    with pytest.raises(UsageError, match="checkpoint x.pt holds no model_state"):
        model_state_from({"epoch": 1}, "x.pt")


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    random.gauss(0, 1)
    path = tmp_path / "rng.pt"
    torch.save({"rng": capture_rng_state()}, path)

    def draws():
        return (torch.rand(3).tolist(), np.random.normal(size=3).tolist(),
                [random.random(), random.gauss(0, 1)])

    expected = draws()
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert draws() == expected


# --- a kill during a checkpoint write -----------------------------------------------------------

def _save_forever(directory: Path) -> None:
    """Child process: continue from the newest checkpoint and save large states without end."""
    manager = CheckpointManager(directory, keep=2)
    loaded = manager.load_latest()
    value = loaded.state["epoch"] if loaded else 0
    while True:
        value += 1
        manager.save({"epoch": value, "step": 10 * value,
                      "model_state": {"w": torch.from_numpy(np.full(4_000_000, value,
                                                                    np.float32))}})


def test_sigkill_at_random_moments_during_saves_leaves_a_consistent_generation(ckdir: Path):
    rng = random.Random(0)
    newest_seen = 0
    for _ in range(6):
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                _save_forever(ckdir)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = CheckpointManager(ckdir, keep=2).load_latest()
        if loaded is None:  # killed before its first save finished
            continue
        value = loaded.state["epoch"]
        assert loaded.verified and loaded.state["step"] == 10 * value
        assert torch.equal(loaded.state["model_state"]["w"], torch.full((4_000_000,),
                                                                       float(value)))
        assert value >= newest_seen  # a committed generation never disappears
        newest_seen = value
        assert all((ckdir / g["file"]).exists()
                   for g in manifest(ckdir)["generations"])
    assert newest_seen > 0
