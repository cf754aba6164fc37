"""The commit record of a checkpoint folder (local or mirror): the names of its files, its
manifest, the verdict of each file, and retention after a commit.

A generation exists once the manifest lists it; the manifest is replaced atomically, so a kill at
any instant leaves the old or the new one, each naming only complete, verified files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ichseg.fileio import is_temp, own_temp
from ichseg.training.checkpoint import files

log = logging.getLogger("ichseg.training.checkpoint")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LAST = "last.pt"
BEST = "best.pt"
LEGACY_KEYS = frozenset({"model_state", "epoch", "history", "best_val", "no_improve",
                         "optimizer_state", "scheduler_state", "scaler_state"})

NUMBERED = re.compile(r"^(ckpt|best)-(\d+)\.pt$")

# Verdicts of one file, as `generations()` and `ichseg status` report them.
OK, MISMATCH, MISSING, UNREADABLE, UNVERIFIED = (
    "ok", "checksum mismatch", "missing", "unreadable", "unverified (no manifest)")


class Bad(Exception):
    """A checkpoint file that failed a check; the message is the verdict shown to the user."""


class Folder:
    """One checkpoint folder (local or mirror): its numbered files, aliases and manifest."""

    def __init__(self, directory: Path, label: str):
        self.directory = directory
        self.label = label

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none; raises Bad when it cannot be read."""
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise Bad(f"manifest {path} cannot be read ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("generations"), list):
            raise Bad(f"manifest {path} does not hold a list of generations")
        for entry in entries(manifest):
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and isinstance(entry.get("sha256"), str)
                    and isinstance(entry.get("number"), int)):
                raise Bad(f"manifest {path} has a malformed entry {entry!r:.80}")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1).encode()
        files.write_hashed(self.directory / MANIFEST, lambda f: f.write(text))

    def discard_uncommitted(self, name: str) -> None:
        """Delete file `name` unless the manifest lists it (a save that failed after its rename).
        With an unreadable manifest nothing is deleted: the next save adopts the files."""
        try:
            manifest = self.read_manifest()
        except Bad:
            return
        if manifest is None or name not in {e["file"] for e in entries(manifest)}:
            (self.directory / name).unlink(missing_ok=True)

    def numbered_files(self) -> list[tuple[int, str]]:
        """(number, name) of every ckpt-/best- file present, newest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        found = [(int(m.group(2)), name) for name in names if (m := NUMBERED.match(name))]
        return sorted(found, reverse=True)

    def highest_number(self) -> int:
        numbers = [n for n, _ in self.numbered_files()]
        try:
            manifest = self.read_manifest()
        except Bad:
            manifest = None
        if manifest:
            numbers += [e.get("number", 0) for e in entries(manifest)]
        return max(numbers, default=0)

    def verdict(self, entry: dict[str, Any]) -> str:
        path = self.directory / entry["file"]
        try:
            digest = files.sha256_file(path)
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
        except Bad as exc:
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
        files.point_alias(self.directory, BEST if kind == "best" else LAST, newest)
        self._remove_unlisted(manifest, below=entry["number"])

    def _adopt_files(self) -> dict[str, Any]:
        """A manifest for a folder that lost its own: the files present are listed with the hash
        they have now (they cannot be verified, but retention then treats them like any other
        generation instead of deleting them at once)."""
        manifest: dict[str, Any] = {"format": FORMAT_VERSION, "generations": [], "best": None}
        for number, name in sorted(self.numbered_files()):
            path = self.directory / name
            try:
                entry = {"number": number, "file": name, "sha256": files.sha256_file(path),
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
        listed = {e["file"] for e in entries(manifest)}
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


def entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry of a manifest: the generations and the best state."""
    return list(manifest.get("generations", [])) + ([manifest["best"]] if manifest.get("best")
                                                      else [])


def as_int(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
