"""Hashed atomic writing: a checkpoint (or a copy of one) lands through `ichseg.fileio`, hashed
while it is written, and the aliases `last.pt` / `best.pt` are pointed at it atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ichseg.fileio import atomic_open, atomic_path, fsync_dir

CHUNK = 1 << 22


class HashingWriter:
    """Hands bytes to a file while hashing them: the SHA-256 of what was sent, without a pass
    of its own (the re-read afterwards checks what actually landed on disk)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def sha256_file(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def write_hashed(final: Path, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
    """Write `final` atomically (`ichseg.fileio`); return (sha256, size).

    `write` receives a file object that hashes what passes through it.
    """
    writer: HashingWriter | None = None
    try:
        with atomic_open(final, "wb") as f:
            writer = HashingWriter(f)
            write(writer)  # type: ignore[arg-type]
    except Exception as exc:
        # torch.save reports a failed write as a RuntimeError of its own ("unexpected pos"); the
        # OSError underneath says why (a full disk), so that is what the caller gets.
        if writer is not None and writer.error is not None and exc is not writer.error:
            raise writer.error from exc
        raise
    return writer.sha.hexdigest(), writer.size


def copy_file(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy one open file into another (the mirror copy; tests replace it to simulate a mirror
    that fails, hangs or truncates)."""
    shutil.copyfileobj(src, dst, CHUNK)


def point_alias(directory: Path, alias: str, target: str) -> None:
    """Make `alias` (last.pt, best.pt) refer to `target` atomically: a relative symlink replaced via
    a temporary link, or an atomic copy where the file system has no links (e.g. Google Drive)."""
    final = directory / alias
    try:
        with atomic_path(final, durable=False) as tmp:
            os.symlink(target, tmp)
        fsync_dir(directory)
    except OSError:
        with open(directory / target, "rb") as src:
            write_hashed(final, lambda f: copy_file(src, f))
