"""One trainer per run folder: `RUN/.lock`, created exclusively and held with `flock`.

The file records who holds it (PID, host, start time) for the message a second trainer prints.
The `flock` is what makes a crash harmless: the kernel drops it when its process dies, however it
dies, so a lock file whose `flock` can be taken belongs to nobody and is taken over with a
warning. Where the file system has no `flock` (some network mounts), the recorded PID decides on
the same host; a lock from another host is never taken over automatically.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ichseg.errors import UsageError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """Context manager holding `RUN/.lock` for as long as a trainer works in `run_dir`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = self._open_locked()
            if fd is not None and _still_named(fd, self.path):
                self._fd = fd
                _write_holder(fd)
                return
            # The file we locked was released and unlinked meanwhile (or vanished before we
            # opened it): holding a lock on a deleted file would guard nothing. Start over.
            if fd is not None:
                os.close(fd)
        raise UsageError(f"run folder {self.run_dir}: its lock file {self.path} keeps changing; "
                         "is another trainer starting and stopping there?")

    def _open_locked(self) -> int | None:
        """A descriptor of the lock file, locked by us; None if it vanished before we opened it.

        Raises UsageError when a living trainer holds it.
        """
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                return None
            return self._take_over(fd)
        if _try_flock(fd) is False:
            # Another trainer opened the new file and locked it between our create and our
            # flock: it won the race.
            holder = _read_holder(fd)
            os.close(fd)
            raise UsageError(_in_use_message(self.run_dir, holder))
        return fd

    def _take_over(self, fd: int) -> int:
        """Given an existing lock file, return its descriptor locked if its holder is gone."""
        locked = _try_flock(fd)
        holder = _read_holder(fd)  # after the flock attempt: a winner has written itself in
        here = holder.get("host") == socket.gethostname()
        pid = holder.get("pid")
        if locked is None:  # no flock on this file system: judge by the recorded process
            stale = here and isinstance(pid, int) and not _pid_alive(pid)
        else:
            stale = locked and (here or not holder)
        if not stale:
            os.close(fd)
            if locked and not here:
                raise UsageError(
                    f"run folder {self.run_dir} is locked by PID {pid} on host "
                    f"{holder.get('host')} since {holder.get('started', '?')}; if that trainer "
                    f"is gone, delete {self.path}")
            raise UsageError(_in_use_message(self.run_dir, holder))
        log.warning("taking over the stale lock %s of PID %s on %s (started %s): that process "
                    "is gone", self.path, pid, holder.get("host", "?"),
                    holder.get("started", "?"))
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the flock: nobody can lock this file before it is gone.
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def lock_held(run_dir: str | Path) -> bool:
    """True while a live trainer holds RUN/.lock: its flock cannot be taken (then released).
    Read-only, for `ichseg status`."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _try_flock(fd) is False
    finally:
        os.close(fd)  # closing drops the flock if it was taken here


def _still_named(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _try_flock(fd: int) -> bool | None:
    """True if locked now, False if someone else holds it, None if the FS has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        holder = json.loads(text)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _in_use_message(run_dir: Path, holder: dict[str, Any]) -> str:
    return (f"run folder {run_dir} is in use by PID {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {holder.get('started', '?')}")
