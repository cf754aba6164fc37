"""Atomic file writes: the one way ichseg replaces a file that someone may read or that a kill
may interrupt (run files, checkpoints, predictions, pictures, cache entries).

A file is written under a temporary name in its own folder (a rename across file systems would be
a copy), flushed and fsynced, then renamed over the final name, and the folder fsynced so the
rename survives a power cut. A reader sees the old file or the new one, never half of one. On any
failure, KeyboardInterrupt included, the temporary file is removed and the final name untouched.

Temporary names start with a dot and carry `TEMP_SUFFIX`, the writer's process id and thread id,
so no scan for real files picks them up and a folder's owner can tell another process's
leftovers (`is_temp`, `own_temp`) from a write in progress.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_path(final: str | Path, suffix: str = "") -> Path:
    """A temporary name beside `final`. `suffix` is appended for writers that pick a format
    from the file name (nibabel compresses `.nii.gz`)."""
    final = Path(final)
    return final.with_name(
        f".{final.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}{suffix}")


def is_temp(name: str) -> bool:
    """Whether `name` is a temporary file of `temp_path` (of any process)."""
    return name.startswith(".") and TEMP_SUFFIX in name


def own_temp(name: str) -> bool:
    """Whether `name` is a temporary file of this process (possibly being written right now)."""
    return is_temp(name) and f".{os.getpid()}." in name


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in `directory` durable. Some file systems (and Windows) cannot open a folder
    or fsync it: skipped there, as the rename itself is still atomic."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name (torch.save,
    nibabel, PNG writers); on leaving the block without an exception it is renamed over `path`.

    `durable=False` skips the fsyncs: still atomic for readers, but a power cut may lose the new
    file. Only for files that are rebuilt when missing (cache entries, pictures).
    """
    final = Path(path)
    tmp = temp_path(final, suffix)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(final.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", durable: bool = True,
                **open_args: object) -> Iterator[BinaryIO]:
    """Yield an open temporary file beside `path` (`mode` "wb" or "w"; `open_args` go to `open`);
    on leaving the block it is flushed, fsynced and renamed over `path`."""
    with atomic_path(path, durable=False) as tmp:
        with open(tmp, mode, **open_args) as handle:  # type: ignore[call-overload]
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    if durable:
        fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Replace `path` with `data` atomically."""
    with atomic_open(path, "wb", durable=durable) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, durable: bool = True,
                      encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically."""
    return atomic_write_bytes(path, text.encode(encoding), durable=durable)
