"""The preprocessed-case cache: each scan is decoded and resampled once per dataset.

An entry is the output of `ct.prepare_hu` (reoriented, cropped, resampled) stored as int16 HU
plus uint8 training labels in one uncompressed `.npz`. HU rather than window channels: with three
windows it is 6 times smaller than float32 channels, windowing at load costs a few milliseconds
(see `benchmarks/data.py`), and changing `data.windows` reuses the cache. Rounding to whole HU is
far below any window's resolution (the narrowest, 80 HU, spans 1.0 in 80 steps).

The key is the SHA-256 of the files' absolute paths, sizes and modification times, every setting
that changes the stored arrays, and `FORMAT_VERSION`; a changed file or setting is a miss, never
a stale hit. Entries are written to a temp file in the cache folder and renamed into place, so a
crash or a concurrent writer (several ranks) never leaves a half-written entry under a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ichseg.config import DataConfig
from ichseg.data.ct import prepare_hu, window_channels
from ichseg.data.inspect import check_case
from ichseg.data.layouts import LABEL_MAPPINGS, Case, LabelMapping
from ichseg.errors import UsageError
from ichseg.fileio import atomic_open

# Bump whenever preprocessing changes what it stores (crop rule, interpolation, dtype...).
FORMAT_VERSION = 1
CACHE_ENV = "ICHSEG_CACHE"
_INT16 = np.iinfo(np.int16)
# What np.load raises on a truncated or foreign entry: treated as a miss and rewritten.
_BROKEN_ENTRY = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


@dataclass
class PreparedCase:
    """One training case on the network grid: window channels (C, X, Y, Z) float32 and training
    labels (X, Y, Z) uint8 (any hemorrhage = 1, or the five subtype codes)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


def cache_root(data_cfg: DataConfig) -> Path:
    """`data.cache_dir`, else `$ICHSEG_CACHE`, else `~/.cache/ichseg`."""
    chosen = data_cfg.cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ichseg"
    return Path(chosen).expanduser()


def _file_identity(path: Path | None, role: str) -> dict | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        raise UsageError(f"{role} {path} does not exist or cannot be read") from None
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class PreprocessedCache:
    """Reads cases through the cache in `root` (see `cache_root`), preprocessing on a miss."""

    def __init__(self, data_cfg: DataConfig, root: str | Path | None = None,
                 label_mapping: LabelMapping | None = None):
        self.data_cfg = data_cfg
        self.root = Path(root) if root is not None else cache_root(data_cfg)
        self.label_mapping = label_mapping

    def key(self, case: Case) -> str:
        """SHA-256 of the files' identities and every setting that changes the stored arrays."""
        cfg, mapping = self.data_cfg, self.label_mapping
        fingerprint = {
            "format": FORMAT_VERSION,
            "image": _file_identity(Path(case.image), "image"),
            "label": _file_identity(Path(case.label) if case.label else None, "label"),
            "spacing": [float(s) for s in cfg.spacing],
            "crop_to_head": cfg.crop_to_head,
            "subtypes": cfg.subtypes,
            "label_mapping": None if mapping is None else [mapping.allowed, mapping.binary],
        }
        text = json.dumps(fingerprint, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, case: Case) -> Path:
        return self.root / f"{self.key(case)}.npz"

    def load(self, case: Case) -> tuple[np.ndarray, np.ndarray | None]:
        """(window channels (C, X, Y, Z) float32, training labels (X, Y, Z) uint8 or None)."""
        hu, label = self.load_hu(case)
        return window_channels(hu, self.data_cfg.windows), label

    def load_hu(self, case: Case) -> tuple[np.ndarray, np.ndarray | None]:
        """(int16 HU on the network grid, training labels or None), from the cache if present."""
        entry = self.path(case)
        if entry.is_file():
            try:
                with np.load(entry) as stored:
                    return stored["hu"], (stored["label"] if "label" in stored else None)
            except _BROKEN_ENTRY:
                pass  # rewritten below from the original files
        # The same checks as `ichseg inspect`: readable files, label on the image's grid.
        check = check_case(case, self.label_mapping or LABEL_MAPPINGS["generic"])
        if check.problems:
            raise UsageError(check.problems[0])
        for message in check.warnings:
            warnings.warn(message, UserWarning, stacklevel=2)
        hu, labels, _ = prepare_hu(check.image, check.label, self.data_cfg, self.label_mapping)
        hu = np.clip(np.rint(hu), _INT16.min, _INT16.max).astype(np.int16)
        self._store(entry, hu, labels)
        return hu, labels

    def _store(self, entry: Path, hu: np.ndarray, label: np.ndarray | None) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            arrays = {"hu": hu} if label is None else {"hu": hu, "label": label}
            # Not fsynced: an entry lost to a power cut is decoded again.
            with atomic_open(entry, "wb", durable=False) as handle:
                np.savez(handle, **arrays)
        except OSError as exc:
            raise UsageError(f"cache folder {self.root} is not writable ({exc.strerror}); set "
                             f"data.cache_dir or ${CACHE_ENV} to another folder") from None


def load_cases(data_cfg: DataConfig, cases: Sequence[Case], progress: bool = True,
               label_mapping: LabelMapping | None = None) -> list[PreparedCase]:
    """Every case on the network grid, in memory: decoded from disk at most once per dataset."""
    cache = PreprocessedCache(data_cfg, label_mapping=label_mapping)
    prepared = []
    for case in tqdm(cases, desc="preparing cases", unit="case", disable=not progress):
        if case.label is None:
            raise UsageError(f"image {case.image} has no label file; training needs one per case")
        image, label = cache.load(case)
        prepared.append(PreparedCase(case.case_id, image, label))
    return prepared
