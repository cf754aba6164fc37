"""Checkpoints that nothing can break: atomic numbered generations, a SHA-256 manifest as the
commit record, retention after verification, fallback to the previous good generation, and an
optional mirror (e.g. Google Drive) filled in the background.

A checkpoint folder (`RUN/checkpoints`, and the mirror folder, which has the same layout) holds:

    ckpt-000012.pt   numbered generations of the full training state (newest `keep` kept)
    best-000011.pt   the state of the best validation epoch (only the newest kept)
    last.pt, best.pt relative links to the newest of each (copies where links are unsupported)
    manifest.json    every committed file with its SHA-256, size, epoch, step and creation time

A generation exists once the manifest lists it: the file is written under a temporary name in the
same folder, fsynced, renamed over, re-read and hashed, and only then recorded; the manifest itself
is replaced atomically the same way. So a kill at any instant leaves either the old or the new
manifest, each naming only complete, verified files. Loading always checks the SHA-256 first,
because `torch.load` does not check the zip CRC and a flipped byte can otherwise load silently,
and always uses `weights_only=True`, so a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ichseg.errors import UsageError
from ichseg.fileio import atomic_open, atomic_path, fsync_dir, is_temp, own_temp

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LAST = "last.pt"
BEST = "best.pt"
LEGACY_KEYS = frozenset({"model_state", "epoch", "history", "best_val", "no_improve",
                         "optimizer_state", "scheduler_state", "scaler_state"})

_NUMBERED = re.compile(r"^(ckpt|best)-(\d+)\.pt$")
_CHUNK = 1 << 22

# Verdicts of one file, as `generations()` and `ichseg status` report them.
OK, MISMATCH, MISSING, UNREADABLE, UNVERIFIED = (
    "ok", "checksum mismatch", "missing", "unreadable", "unverified (no manifest)")


@dataclass
class LoadedCheckpoint:
    """A checkpoint that passed its checks: the state, where it came from and its manifest entry."""

    state: dict[str, Any]
    path: Path
    generation: int
    source: str  # "local" or "mirror"
    verified: bool  # False when no manifest was there to check the SHA-256 against
    entry: dict[str, Any]


class _Bad(Exception):
    """A checkpoint file that failed a check; the message is the verdict shown to the user."""


# --- files ------------------------------------------------------------------------------------

class _HashingWriter:
    """Hands bytes to a file while hashing them: the SHA-256 of what was sent, without a pass
    of its own (the re-read afterwards checks what actually landed on disk)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def sha256_file(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _write_atomic(final: Path, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
    """Write `final` atomically (`ichseg.fileio`); return (sha256, size).

    `write` receives a file object that hashes what passes through it.
    """
    with atomic_open(final, "wb") as f:
        writer = _HashingWriter(f)
        write(writer)  # type: ignore[arg-type]
    return writer.sha.hexdigest(), writer.size


def _copy_file(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy one open file into another (the mirror copy; tests replace it to simulate a mirror
    that fails, hangs or truncates)."""
    shutil.copyfileobj(src, dst, _CHUNK)


def _point_alias(directory: Path, alias: str, target: str) -> None:
    """Make `alias` (last.pt, best.pt) refer to `target` atomically: a relative symlink replaced via
    a temporary link, or an atomic copy where the file system has no links (e.g. Google Drive)."""
    final = directory / alias
    try:
        with atomic_path(final, durable=False) as tmp:
            os.symlink(target, tmp)
        fsync_dir(directory)
    except OSError:
        with open(directory / target, "rb") as src:
            _write_atomic(final, lambda f: _copy_file(src, f))


def _numpy_data_globals() -> list[Any]:
    """NumPy's constructors of plain numeric scalars and arrays, for `weights_only` loading.

    Legacy checkpoints often hold NumPy floats (a `best_val` from `np.mean`). These globals only
    rebuild numbers from bytes; object arrays stay refused (their dtype is not listed). Pickles
    made by NumPy 1.x name the module `numpy.core.multiarray`, NumPy 2 `numpy._core.multiarray`:
    both spellings are listed.
    """
    from numpy._core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"),
                    (function, f"numpy._core.multiarray.{name}")]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdFD"]
    return allowed


def _torch_load(path: Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)`, its failures turned into a verdict."""
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know, before calling it: nothing ran.
        detail = str(exc).splitlines()[0] if str(exc) else "unsupported object"
        if "weights only" in detail.lower() or "unsupported global" in str(exc).lower():
            raise _Bad("refused: it holds objects that could run code when loaded "
                       f"({_unsupported_global(str(exc))})") from None
        raise _Bad(f"{UNREADABLE} ({detail})") from None
    except Exception as exc:  # truncated zip, wrong magic, EOF: torch raises several types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Bad(f"{UNREADABLE} ({detail[:160]})") from None
    if not isinstance(state, dict):
        raise _Bad(f"{UNREADABLE} (holds a {type(state).__name__}, not a checkpoint dict)")
    return state


def _unsupported_global(message: str) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else "weights-only load failed"


# --- one folder: files and manifest -------------------------------------------------------------

class _Folder:
    """One checkpoint folder (local or mirror): its numbered files, aliases and manifest."""

    def __init__(self, directory: Path, label: str):
        self.directory = directory
        self.label = label

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none; raises _Bad when it cannot be read."""
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _Bad(f"manifest {path} cannot be read ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("generations"), list):
            raise _Bad(f"manifest {path} does not hold a list of generations")
        for entry in _entries(manifest):
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and isinstance(entry.get("sha256"), str)
                    and isinstance(entry.get("number"), int)):
                raise _Bad(f"manifest {path} has a malformed entry {entry!r:.80}")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1).encode()
        _write_atomic(self.directory / MANIFEST, lambda f: f.write(text))

    def numbered_files(self) -> list[tuple[int, str]]:
        """(number, name) of every ckpt-/best- file present, newest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        found = [(int(m.group(2)), name) for name in names if (m := _NUMBERED.match(name))]
        return sorted(found, reverse=True)

    def highest_number(self) -> int:
        numbers = [n for n, _ in self.numbered_files()]
        try:
            manifest = self.read_manifest()
        except _Bad:
            manifest = None
        if manifest:
            numbers += [e.get("number", 0) for e in _entries(manifest)]
        return max(numbers, default=0)

    def verdict(self, entry: dict[str, Any]) -> str:
        path = self.directory / entry["file"]
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            return MISSING
        except OSError:
            return UNREADABLE
        return OK if digest == entry.get("sha256") else MISMATCH

    def commit(self, kind: str, entry: dict[str, Any], keep: int) -> None:
        """Record a verified file in the manifest, point its alias at it, then delete what fell
        out of retention and what a crash left behind."""
        try:
            manifest = self.read_manifest()
        except _Bad as exc:
            log.warning("%s; writing a new one that adopts the files present", exc)
            manifest = None
        if manifest is None:
            manifest = self._adopt_files()
        if kind == "best":
            manifest["best"] = entry
        else:
            gens = [g for g in manifest["generations"] if g["file"] != entry["file"]] + [entry]
            gens.sort(key=lambda g: g["number"])
            manifest["generations"] = gens[-keep:]
        self.write_manifest(manifest)
        newest = entry["file"] if kind == "best" else manifest["generations"][-1]["file"]
        _point_alias(self.directory, BEST if kind == "best" else LAST, newest)
        self._remove_unlisted(manifest, below=entry["number"])

    def _adopt_files(self) -> dict[str, Any]:
        """A manifest for a folder that lost its own: the files present are listed with the hash
        they have now (they cannot be verified, but retention then treats them like any other
        generation instead of deleting them at once)."""
        manifest: dict[str, Any] = {"format": FORMAT_VERSION, "generations": [], "best": None}
        for number, name in sorted(self.numbered_files()):
            path = self.directory / name
            try:
                entry = {"number": number, "file": name, "sha256": sha256_file(path),
                         "size": path.stat().st_size, "epoch": None, "step": None,
                         "created": path.stat().st_mtime, "adopted": True}
            except OSError:
                continue
            if name.startswith("best-"):
                manifest["best"] = entry
            else:
                manifest["generations"].append(entry)
        return manifest

    def _remove_unlisted(self, manifest: dict[str, Any], below: int) -> None:
        """Delete numbered files older than the one just committed that the manifest does not
        list: generations dropped by retention, the previous best, and leftovers of a crash
        between a rename and the manifest. Temporary files of other processes (this one's may
        be in use) go too."""
        listed = {e["file"] for e in _entries(manifest)}
        for number, name in self.numbered_files():
            if number < below and name not in listed:
                try:
                    (self.directory / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not delete old checkpoint %s: %s", self.directory / name,
                                exc)
        for name in os.listdir(self.directory):
            if is_temp(name) and not own_temp(name):
                (self.directory / name).unlink(missing_ok=True)


def _entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry of a manifest: the generations and the best state."""
    return list(manifest.get("generations", [])) + ([manifest["best"]] if manifest.get("best")
                                                      else [])


def _as_int(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# --- the manager --------------------------------------------------------------------------------

class CheckpointManager:
    """Saves and loads the checkpoints of one run folder; see the module docstring for the layout.

    `directory` is `RUN/checkpoints`; `keep` numbered generations are kept; with `mirror_dir`, each
    committed file is also copied there in a background thread (see `_Mirror`).
    """

    def __init__(self, directory: str | Path, keep: int = 3, mirror_dir: str | Path | None = None):
        if keep < 1:
            raise UsageError(f"setting training.keep_checkpoints must be at least 1, got {keep}")
        self.directory = Path(directory)
        if mirror_dir and Path(mirror_dir).resolve() == self.directory.resolve():
            raise UsageError(f"--mirror-dir {mirror_dir} is the run's own checkpoint folder; "
                             "name a folder elsewhere (e.g. on Google Drive)")
        self.keep = keep
        self.local = _Folder(self.directory, "local")
        self.mirror = _Mirror(Path(mirror_dir), self.directory, keep) if mirror_dir else None
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
        digest, size = _write_atomic(path, lambda f: torch.save(state, f))
        # Verify what is on disk before anything older may go: a file that reads back differently
        # is removed and the save fails, with every older generation untouched.
        if sha256_file(path) != digest:
            path.unlink(missing_ok=True)
            raise OSError(f"checkpoint {path} read back with a different SHA-256 than written; "
                          "the disk may be failing; older checkpoints were kept")
        entry = {"number": number, "file": path.name, "sha256": digest, "size": size,
                 "epoch": _as_int(state.get("epoch")), "step": _as_int(state.get("step")),
                 "created": time.time()}
        self.local.commit("best" if kind == "best" else "ckpt", entry, self.keep)
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
            loaded, present = _newest_valid(folder, failures)
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
        best = max(candidates, key=lambda c: (_as_int(c.state.get("step")),
                                              _as_int(c.state.get("epoch")),
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
                digest, _ = _write_atomic(local, lambda f: _copy_file(src, f))
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
            except _Bad:
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
            for entry in _entries(manifest):
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


def _newest_valid(folder: _Folder, failures: list[str]) -> tuple[LoadedCheckpoint | None, bool]:
    """The newest generation of one folder that passes its checks, and whether any was present.

    Each failure is logged by name and appended to `failures`.
    """
    def fail(path: Path, why: str) -> None:
        log.warning("checkpoint %s is not usable: %s; trying the previous generation", path, why)
        failures.append(f"{path} ({why})")

    try:
        manifest = folder.read_manifest()
    except _Bad as exc:
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
                state = _torch_load(path)
            except _Bad as exc:
                fail(path, str(exc))
                continue
            return LoadedCheckpoint(state, path, entry["number"], folder.label,
                                    not entry.get("adopted"), entry), True
        return None, bool(manifest["generations"])
    # No manifest (or an unreadable one): the files themselves, newest first, unverified.
    files = [(n, name) for n, name in folder.numbered_files() if name.startswith("ckpt-")]
    if files:
        log.warning("no readable %s in %s: checksums of its checkpoints cannot be verified",
                    MANIFEST, folder.directory)
    for number, name in files:
        path = folder.directory / name
        try:
            state = _torch_load(path)
        except _Bad as exc:
            fail(path, str(exc))
            continue
        log.warning("using %s without checksum verification", path)
        entry = {"number": number, "file": name, "sha256": sha256_file(path),
                 "size": path.stat().st_size, "epoch": _as_int(state.get("epoch")),
                 "step": _as_int(state.get("step")), "created": path.stat().st_mtime}
        return LoadedCheckpoint(state, path, number, folder.label, False, entry), True
    return None, bool(files)


# --- one file from anywhere ---------------------------------------------------------------------

def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file (`--resume-from`, `predict --checkpoint`) with its checks.

    Verified against a manifest beside it when there is one; always `weights_only=True`, so a
    pickle that would run code is refused (UsageError naming the file) without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint file {path} does not exist")
    folder = _Folder(path.parent, "local")
    try:
        manifest = folder.read_manifest()
    except _Bad:
        manifest = None
    if manifest is not None:
        _verify_against(path, manifest)
    try:
        return _torch_load(path)
    except _Bad as exc:
        raise UsageError(f"checkpoint file {path} is not usable: {exc}") from None


def _verify_against(path: Path, manifest: dict[str, Any]) -> None:
    """Check `path` against the manifest of its folder: by its own name, through the link it is,
    or (an alias copy where links are unsupported) by matching any listed file's SHA-256."""
    entries = _entries(manifest)
    name = path.resolve().name
    listed = {e["file"]: e for e in entries}
    if name in listed:
        expected = {listed[name]["sha256"]}
    elif path.name in (LAST, BEST):
        expected = {e["sha256"] for e in entries}
    else:
        return  # a file the manifest does not cover (copied in by hand): nothing to compare with
    if sha256_file(path) not in expected:
        raise UsageError(f"checkpoint file {path} does not match the SHA-256 recorded in "
                         f"{path.parent / MANIFEST}: it is damaged")


def is_legacy(checkpoint: dict[str, Any]) -> bool:
    """True for the old format: the eight legacy keys only (no format_version, step or rng)."""
    return (isinstance(checkpoint, dict) and "model_state" in checkpoint
            and set(checkpoint) <= LEGACY_KEYS)


def model_state_from(checkpoint: dict[str, Any], origin: str | Path = "checkpoint") -> dict:
    """The network weights of a checkpoint (ours, legacy, or a bare state dict) for inference."""
    state = checkpoint.get("model_state")
    if state is None and checkpoint and all(isinstance(v, torch.Tensor)
                                            for v in checkpoint.values()):
        state = checkpoint  # a bare `model.state_dict()` saved on its own
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {origin} holds no model_state")
    return state


# --- random number generators ---------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """torch (CPU, and CUDA when present), NumPy's global and Python's `random` states, as
    tensors and plain numbers, so `torch.load(weights_only=True)` needs no allow-list."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`; CUDA states are restored only where this machine has CUDA."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        devices = min(len(cuda), torch.cuda.device_count())
        for device in range(devices):
            torch.cuda.set_rng_state(cuda[device], device)


# --- the mirror -----------------------------------------------------------------------------

class _Mirror:
    """Copies committed files to a second folder (e.g. Google Drive) in a background thread.

    At most one copy runs; a newer file of the same kind replaces one still queued, so a slow
    mirror lags but never blocks `save`. Each copy lands under a temporary name, is fsynced,
    read back and hashed there, and only then renamed and recorded in the mirror's own manifest.
    Any failure (the mirror raises, is full, vanishes) is a warning: the run and the local
    checkpoints never depend on it.
    """

    def __init__(self, directory: Path, source: Path, keep: int):
        self.folder = _Folder(directory, "mirror")
        self.source = source
        self.keep = keep
        self._pending: dict[str, dict[str, Any]] = {}
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._checked_ahead = False

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
        except _Bad:
            manifest = None
        newest = max(((_as_int(g.get("step")), _as_int(g.get("epoch")))
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
                log.warning("could not mirror checkpoint %s to %s: %s", entry["file"],
                            self.folder.directory, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _copy(self, kind: str, entry: dict[str, Any]) -> None:
        if not self._checked_ahead:
            self._set_aside_if_ahead(entry)
        directory = self.folder.directory
        # Open the source first: once open, local retention may delete it while a slow mirror
        # is still being written, and the copy still completes.
        with open(self.source / entry["file"], "rb") as src:
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / entry["file"]
            _write_atomic(final, lambda f: _copy_file(src, f))
        # The hash computed while writing only proves what was sent; read it back from the mirror.
        if sha256_file(final) != entry["sha256"]:
            final.unlink(missing_ok=True)
            raise OSError("the copy read back from the mirror does not match its SHA-256")
        self.folder.commit(kind, entry, self.keep)

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
