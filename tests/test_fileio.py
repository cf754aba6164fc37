"""The one atomic-write helper: the final name holds the old file or the new one, never half of
one, and no temporary file survives a failure (a full disk, an interrupt)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ichseg import fileio


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if fileio.is_temp(p.name))


def test_writes_replace_the_file_and_leave_no_temp(tmp_path: Path):
    target = tmp_path / "config.yaml"
    target.write_text("old\n")
    fileio.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    fileio.atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with fileio.atomic_path(tmp_path / "a.nii.gz", suffix=".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp.name[0] == "."
        tmp.write_bytes(b"image")
    assert (tmp_path / "a.nii.gz").read_bytes() == b"image"
    with fileio.atomic_open(tmp_path / "t.csv", "w", newline="") as handle:
        handle.write("a,b\n")
    assert (tmp_path / "t.csv").read_text() == "a,b\n"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, ValueError])
def test_a_failing_writer_keeps_the_old_file(tmp_path: Path, failure: type[BaseException]):
    target = tmp_path / "split.json"
    target.write_text("old")
    with pytest.raises(failure), fileio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise failure()
    with pytest.raises(failure), fileio.atomic_open(target) as handle:
        handle.write(b"half")
        raise failure()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        where: str):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(fileio, "open", lambda *a, **k: _FullFile(open(*a, **k)),
                            raising=False)
    with pytest.raises(OSError) as caught:
        fileio.atomic_write_bytes(target, b"new" * 1000)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


class _FullFile:
    """An open file on a disk that fills up: half of the first write lands, then ENOSPC."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_temp_names_tell_own_from_others(tmp_path: Path):
    mine = fileio.temp_path(tmp_path / "ckpt-000001.pt")
    assert fileio.is_temp(mine.name) and fileio.own_temp(mine.name)
    other = ".ckpt-000001.pt.999999999.1.tmp"
    assert fileio.is_temp(other) and not fileio.own_temp(other)
    assert not fileio.is_temp("ckpt-000001.pt")
