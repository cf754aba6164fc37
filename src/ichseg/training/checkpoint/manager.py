"""CheckpointManager: the one owner of a run's checkpoints: saving, loading with fallback,
retention (through the manifest) and the mirror."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ichseg.errors import DiskFull, UsageError
from ichseg.fileio import is_disk_full
from ichseg.training.checkpoint import files
from ichseg.training.checkpoint.manifest import (
    MANIFEST,
    OK,
    UNVERIFIED,
    Bad,
    Folder,
    as_int,
    entries,
)
from ichseg.training.checkpoint.mirror import Mirror
from ichseg.training.checkpoint.safeload import torch_load

log = logging.getLogger("ichseg.training.checkpoint")


@dataclass
class LoadedCheckpoint:
    """A checkpoint that passed its checks: the state, where it came from and its manifest entry."""

    state: dict[str, Any]
    path: Path
    generation: int
    source: str  # "local" or "mirror"
    verified: bool  # False when no manifest was there to check the SHA-256 against
    entry: dict[str, Any]


class CheckpointManager:
    """Saves and loads the checkpoints of one run folder; see the module docstring for the layout.

    `directory` is `RUN/checkpoints`; `keep` numbered generations are kept; with `mirror_dir`, each
    committed file is also copied there in a background thread (see `Mirror`).
    """

    def __init__(self, directory: str | Path, keep: int = 3, mirror_dir: str | Path | None = None):
        if keep < 1:
            raise UsageError(f"setting training.keep_checkpoints must be at least 1, got {keep}")
        self.directory = Path(directory)
        if mirror_dir and Path(mirror_dir).resolve() == self.directory.resolve():
            raise UsageError(f"--mirror-dir {mirror_dir} is the run's own checkpoint folder; "
                             "name a folder elsewhere (e.g. on Google Drive)")
        self.keep = keep
        self.local = Folder(self.directory, "local")
        self.mirror = Mirror(Path(mirror_dir), self.directory, keep) if mirror_dir else None
        self._number: int | None = None

    # saving ---------------------------------------------------------------------------------
    def save(self, state: dict[str, Any]) -> Path:
        """Commit `state` as a new numbered generation and point `last.pt` at it."""
        return self._save("ckpt", state)

    def save_best(self, state: dict[str, Any]) -> Path:
        """Commit `state` as the best model (`best.pt`), replacing the previous best."""
        return self._save("best", state)

    def _save(self, kind: str, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        number = self._next_number()
        path = self.directory / f"{kind}-{number:06d}.pt"
        try:
            digest, size = files.write_hashed(path, lambda f: torch.save(state, f))
            # Verify what is on disk before anything older may go: a file that reads back
            # differently is removed and the save fails, with every older generation untouched.
            if files.sha256_file(path) != digest:
                path.unlink(missing_ok=True)
                raise OSError(f"checkpoint {path} read back with a different SHA-256 than "
                              "written; the disk may be failing; older checkpoints were kept")
            entry = {"number": number, "file": path.name, "sha256": digest, "size": size,
                     "epoch": as_int(state.get("epoch")), "step": as_int(state.get("step")),
                     "created": time.time()}
            self.local.commit(kind, entry, self.keep)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # The temporary file is gone already; a file the manifest does not list (the disk
            # filled while the manifest was written) would only hold space.
            self.local.discard_uncommitted(path.name)
            raise DiskFull(self.directory, f"saving checkpoint {path.name}",
                           tensor_bytes(state)) from None
        if self.mirror:
            self.mirror.submit("best" if kind == "best" else "ckpt", entry)
        return path

    def _next_number(self) -> int:
        if self._number is None:
            # Numbers never repeat, across restarts and across the mirror, so a generation's
            # number identifies it everywhere and the mirror's retention never drops a new one.
            highest = self.local.highest_number()
            if self.mirror:
                highest = max(highest, self.mirror.highest_number())
            self._number = highest
        self._number += 1
        return self._number

    # loading --------------------------------------------------------------------------------
    def load_latest(self, copy_back: bool = True) -> LoadedCheckpoint | None:
        """The newest generation that passes every check, locally or in the mirror.

        Failed generations are reported by name with a warning and skipped. No checkpoint at all:
        None. Checkpoints present but none valid: UsageError naming each, nothing touched.
        A winner from the mirror is copied into the local folder (`bring_home`) unless
        `copy_back` is False: that writes, so only the holder of the run's lock may do it.
        """
        failures: list[str] = []
        found_any = False
        candidates: list[LoadedCheckpoint] = []
        folders = [self.local] + ([self.mirror.folder] if self.mirror else [])
        for folder in folders:
            loaded, present = newest_valid(folder, failures)
            found_any |= present
            if loaded:
                candidates.append(loaded)
        if not candidates:
            if found_any:
                where = self.directory if not self.mirror else (
                    f"{self.directory} and the mirror {self.mirror.folder.directory}")
                raise UsageError(f"no valid checkpoint in {where}: " + "; ".join(failures))
            return None
        # Newest by training progress; the local copy wins a tie (it is the faster disk).
        best = max(candidates, key=lambda c: (as_int(c.state.get("step")),
                                              as_int(c.state.get("epoch")),
                                              c.source == "local"))
        if best.source == "mirror" and copy_back:
            best = self.bring_home(best)
        return best

    def bring_home(self, loaded: LoadedCheckpoint) -> LoadedCheckpoint:
        """A fresh runtime with an empty local disk resumes from the mirror: copy the generation
        into the local folder (verified, committed) so later saves and retention continue from
        it. Local generations are returned unchanged; a failed copy is a warning."""
        if loaded.source != "mirror" or loaded.path.parent == self.directory:
            return loaded
        log.warning("resuming from the mirror's %s (newer than anything in %s)",
                    loaded.path, self.directory)
        entry = loaded.entry
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            local = self.directory / entry["file"]
            with open(loaded.path, "rb") as src:
                digest, _ = files.write_hashed(local, lambda f: files.copy_file(src, f))
            if digest != entry["sha256"]:
                local.unlink(missing_ok=True)
                raise OSError("the local copy hashes differently")
            self.local.commit("ckpt", dict(entry), self.keep)
        except OSError as exc:
            log.warning("could not copy %s into %s (%s); resuming from the mirror's file",
                        loaded.path, self.directory, exc)
            return loaded
        return LoadedCheckpoint(loaded.state, local, loaded.generation, "mirror", loaded.verified,
                                entry)

    def generations(self) -> list[dict[str, Any]]:
        """Every checkpoint file, local and mirrored, with its verdict, for `ichseg status`."""
        rows: list[dict[str, Any]] = []
        folders = [self.local] + ([self.mirror.folder] if self.mirror else [])
        now = time.time()
        for folder in folders:
            try:
                manifest = folder.read_manifest()
            except Bad:
                manifest = None
            if manifest is None:
                for number, name in folder.numbered_files():
                    path = folder.directory / name
                    stat = path.stat()
                    rows.append({"location": folder.label, "kind": name.split("-")[0],
                                 "number": number, "file": name, "size": stat.st_size,
                                 "age_s": now - stat.st_mtime, "epoch": None, "step": None,
                                 "sha256": None, "verdict": UNVERIFIED})
                continue
            for entry in entries(manifest):
                rows.append({"location": folder.label, "kind": entry["file"].split("-")[0],
                             **{k: entry.get(k) for k in ("number", "file", "size", "epoch",
                                                          "step", "sha256")},
                             "age_s": now - entry.get("created", now),
                             "verdict": folder.verdict(entry)})
        return rows

    # the mirror ---------------------------------------------------------------------------
    def archive_mirror(self, stamp: str) -> Path | None:
        """`--mode new`: move the mirror's files to `MIRROR/archive/<stamp>/` (as the run folder
        moves to `RUN/archive/`), so the old run's generations never win a later continue."""
        if not self.mirror:
            return None
        self.mirror.wait(None)
        return self.mirror.archive(stamp)

    def wait(self, timeout: float | None = 300.0) -> bool:
        """Wait until the mirror has every committed file; False if it is still behind."""
        return self.mirror.wait(timeout) if self.mirror else True

    def close(self, timeout: float | None = 300.0) -> bool:
        """Flush the mirror (at the end of training) and stop its thread."""
        return self.mirror.close(timeout) if self.mirror else True

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def newest_valid(folder: Folder, failures: list[str]) -> tuple[LoadedCheckpoint | None, bool]:
    """The newest generation of one folder that passes its checks, and whether any was present.

    Each failure is logged by name and appended to `failures`.
    """
    def fail(path: Path, why: str) -> None:
        log.warning("checkpoint %s is not usable: %s; trying the previous generation", path, why)
        failures.append(f"{path} ({why})")

    try:
        manifest = folder.read_manifest()
    except Bad as exc:
        log.warning("%s; falling back to the checkpoint files themselves", exc)
        manifest = None
    if manifest is not None:
        # The manifest is the commit record: files it does not list were never committed.
        for entry in sorted(manifest["generations"], key=lambda e: e["number"], reverse=True):
            path = folder.directory / entry["file"]
            verdict = folder.verdict(entry)
            if verdict != OK:
                fail(path, verdict)
                continue
            try:
                state = torch_load(path)
            except Bad as exc:
                fail(path, str(exc))
                continue
            return LoadedCheckpoint(state, path, entry["number"], folder.label,
                                    not entry.get("adopted"), entry), True
        return None, bool(manifest["generations"])
    # No manifest (or an unreadable one): the files themselves, newest first, unverified.
    present = [(n, name) for n, name in folder.numbered_files() if name.startswith("ckpt-")]
    if present:
        log.warning("no readable %s in %s: checksums of its checkpoints cannot be verified",
                    MANIFEST, folder.directory)
    for number, name in present:
        path = folder.directory / name
        try:
            state = torch_load(path)
        except Bad as exc:
            fail(path, str(exc))
            continue
        log.warning("using %s without checksum verification", path)
        entry = {"number": number, "file": name, "sha256": files.sha256_file(path),
                 "size": path.stat().st_size, "epoch": as_int(state.get("epoch")),
                 "step": as_int(state.get("step")), "created": path.stat().st_mtime}
        return LoadedCheckpoint(state, path, number, folder.label, False, entry), True
    return None, bool(present)


def tensor_bytes(state: Any) -> int:
    """The bytes of the tensors in a (nested) state: close to the size of its checkpoint file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0
