"""Errors the CLI reports as one sentence without a traceback: UsageError (a user can fix it,
exit 2), DiskFull (exit 1) and OtherRankFailed (exit 1, on the ranks of a torchrun job that did
not fail themselves)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ichseg.fileio import format_bytes, is_disk_full


class UsageError(Exception):
    """Bad usage or bad input: a setting, a file or a folder that the user must fix.

    The message is a single sentence that names the file or key and says what is wrong. The CLI
    prints it without a traceback and exits 2; whoever raises it must not have changed anything
    on disk yet.
    """

    exit_code = 2


class DiskFull(Exception):
    """A write found its disk (or quota) full. The CLI prints the message without a traceback and
    exits 1; whoever raises it has left every file it had committed intact and no temporary file.
    """

    exit_code = 1

    def __init__(self, folder: str | Path, what: str, needed: int | None = None):
        self.folder = Path(folder)
        free = _free_bytes(self.folder)
        need = f"about {format_bytes(needed)}" if needed is not None else "more space"
        have = f"{format_bytes(free)} free" if free is not None else "its free space unknown"
        super().__init__(f"the disk holding {self.folder} is full: {what} needed {need}, with "
                         f"{have}; free some space and run the same command again to continue "
                         "from the last saved checkpoint")

    @classmethod
    def reported(cls, folder: str | Path, message: str) -> DiskFull:
        """The DiskFull another process (a rank of the same job) raised, with its message as it
        was (the free space that process saw)."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.folder = Path(folder)
        return error


def full_disk(error: OSError, folder: str | Path) -> DiskFull | None:
    """`error` as a DiskFull naming the file it was writing (else `folder`); None when it is not a
    full disk or quota."""
    if not is_disk_full(error):
        return None
    if error.filename:
        path = Path(error.filename)
        return DiskFull(path.parent, f"writing {path.name}")
    return DiskFull(folder, "training")


class OtherRankFailed(Exception):
    """Another rank of this torchrun job failed with an unexpected error: that rank prints its
    traceback, this one the sentence naming it, and both exit 1 (see
    `training.distributed.shared_failures`)."""

    exit_code = 1


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
