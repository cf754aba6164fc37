"""The mirror: committed checkpoints copied to a second folder (e.g. Google Drive) in the
background, never holding up or stopping training."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ichseg.fileio import is_disk_full
from ichseg.training.checkpoint import files
from ichseg.training.checkpoint.manifest import Bad, Folder, as_int

log = logging.getLogger("ichseg.training.checkpoint")


class Mirror:
    """Copies committed files to a second folder (e.g. Google Drive) in a background thread.

    At most one copy runs; a newer file of the same kind replaces one still queued, so a slow
    mirror lags but never blocks `save`. Each copy lands under a temporary name, is fsynced,
    read back and hashed there, and only then renamed and recorded in the mirror's own manifest.
    Any failure (the mirror raises, vanishes) is a warning: the run and the local checkpoints never
    depend on it. A full mirror is said once; every later save tries again, and the newest
    generation lands once there is room.
    """

    def __init__(self, directory: Path, source: Path, keep: int):
        self.folder = Folder(directory, "mirror")
        self.source = source
        self.keep = keep
        self._pending: dict[str, dict[str, Any]] = {}
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._checked_ahead = False
        self._full = False  # the last copy failed for want of space (warned once)

    def archive(self, stamp: str) -> Path | None:
        """Move the mirror's files (not earlier archives) to `archive/<stamp>/`; None if there
        was nothing to move or the move failed (a warning)."""
        source = self.folder.directory
        if not source.is_dir():
            return None
        try:
            items = [item for item in source.iterdir() if item.name != "archive"]
            if not items:
                return None
            target = source / "archive" / stamp
            target.mkdir(parents=True)
            for item in items:
                os.replace(item, target / item.name)
        except OSError as exc:
            log.warning("could not archive the mirror %s: %s", source, exc)
            return None
        return target

    def _set_aside_if_ahead(self, entry: dict[str, Any]) -> None:
        """Before the first copy: a mirror whose newest generation is further along than what
        this run saves belongs to a run that was not resumed from it (a continue that did not
        look at the mirror, another run pointed at the same folder). Retention would prune it
        generation by generation; move it to `archive/` instead, so nothing is lost."""
        self._checked_ahead = True
        try:
            manifest = self.folder.read_manifest()
        except Bad:
            manifest = None
        newest = max(((as_int(g.get("step")), as_int(g.get("epoch")))
                      for g in (manifest or {}).get("generations", [])), default=None)
        if newest is not None and newest > (entry["step"], entry["epoch"]):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = self.archive(stamp)
            if target:
                log.warning("the mirror %s held a run further along (step %d) than this one "
                            "(step %d); it was moved to %s", self.folder.directory, newest[0],
                            entry["step"], target)

    def highest_number(self) -> int:
        try:
            return self.folder.highest_number()
        except OSError as exc:
            log.warning("mirror %s cannot be read: %s", self.folder.directory, exc)
            return 0

    def submit(self, kind: str, entry: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending[kind] = dict(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ichseg-mirror",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                kind = "ckpt" if "ckpt" in self._pending else "best"
                entry = self._pending.pop(kind)
                self._busy = True
            try:
                self._copy(kind, entry)
            except Exception as exc:  # noqa: BLE001 - a mirror failure must never stop training
                self._failed(entry, exc)
            else:
                if self._full:
                    log.info("the mirror %s has room again: it holds %s", self.folder.directory,
                             entry["file"])
                    self._full = False
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _failed(self, entry: dict[str, Any], exc: Exception) -> None:
        if not is_disk_full(exc):
            log.warning("could not mirror checkpoint %s to %s: %s", entry["file"],
                        self.folder.directory, exc)
        elif not self._full:
            # Once per outage: a Drive over quota stays full for many saves.
            self._full = True
            log.warning("could not mirror checkpoint %s: the mirror %s is full (%s); training "
                        "goes on with the local checkpoints and the mirror is tried again at "
                        "each save", entry["file"], self.folder.directory, exc)

    def _copy(self, kind: str, entry: dict[str, Any]) -> None:
        if not self._checked_ahead:
            self._set_aside_if_ahead(entry)
        directory = self.folder.directory
        # Open the source first: once open, local retention may delete it while a slow mirror
        # is still being written, and the copy still completes.
        with open(self.source / entry["file"], "rb") as src:
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / entry["file"]
            files.write_hashed(final, lambda f: files.copy_file(src, f))
        # The hash computed while writing only proves what was sent; read it back from the mirror.
        if files.sha256_file(final) != entry["sha256"]:
            final.unlink(missing_ok=True)
            raise OSError("the copy read back from the mirror does not match its SHA-256")
        try:
            self.folder.commit(kind, entry, self.keep)
        except OSError:
            self.folder.discard_uncommitted(final.name)
            raise

    def wait(self, timeout: float | None) -> bool:
        with self._cond:
            done = self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)
        if not done:
            log.warning("the mirror %s is still copying after %.1f s; the local checkpoints are "
                        "complete", self.folder.directory, timeout or 0)
        return done

    def close(self, timeout: float | None) -> bool:
        done = self.wait(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done
