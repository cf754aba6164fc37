"""The preprocessed-case cache: each scan is decoded and resampled once per dataset, and read back
memory-mapped, so training memory does not grow with the number of cases.

An entry is a folder named by its key, holding the output of `ct.prepare_hu` (reoriented,
cropped, resampled) as uncompressed `.npy` files: `hu.npy` (int16 HU), `label.npy` (uint8
training labels), `foreground.npy` (up to `MAX_FOREGROUND_POINTS` voxel positions per class,
which patch sampling centres on) and `cavity.npy` (bool, the cranial cavity found on the native
scan by `data.cavity` and carried to the grid as labels are; absent when no skull was found). `np.load(mmap_mode="r")` maps them without reading them: a
patch reads only the pages it covers, and those are the kernel's page cache, shared by every
process and dropped under memory pressure, not the trainer's own memory. HU rather than window
channels: with three windows it is 6 times smaller than float32 channels, the windows are applied
to each cut patch (see `data.sampling`), and changing `data.windows` reuses the cache. Rounding
to whole HU is far below any window's resolution (the narrowest, 80 HU, spans 1.0 in 80 steps).

The key is the SHA-256 of the files' absolute paths, sizes and modification times, every setting
that changes the stored arrays, and `FORMAT_VERSION`; a changed file or setting is a miss, never
a stale hit. An entry is written into a temp folder inside the cache folder and renamed into
place whole, so a crash never leaves a half-written entry under a real name, and of several
writers of one entry (several ranks) the first rename wins and the others drop their copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ichseg.config import DataConfig
from ichseg.data.cavity import find_cavity
from ichseg.data.ct import labels_to_network, prepare_hu, window_channels
from ichseg.data.inspect import check_case
from ichseg.data.layouts import LABEL_MAPPINGS, Case, LabelMapping
from ichseg.errors import UsageError
from ichseg.processes import run_jobs, usable_cpus

# Bump whenever preprocessing changes what it stores (crop rule, interpolation, dtype, files...).
# 2: the head crop keeps the whole scan when the part is not head-like; 3: thin slices and fine
# pixels are area-averaged (ct.resample); 4: entries are folders of memory-mappable .npy files;
# 5: the cranial cavity (cavity.npy)
FORMAT_VERSION = 5
CACHE_ENV = "ICHSEG_CACHE"
_INT16 = np.iinfo(np.int16)
# Foreground voxels remembered per case and class: enough to centre patches all over a lesion,
# few enough to stay small for 512 x 512 scans (nnU-Net keeps 10,000 too).
MAX_FOREGROUND_POINTS = 10_000
# What np.load raises on a truncated or foreign file: the entry is treated as a miss and rebuilt.
_BROKEN_ENTRY = (OSError, ValueError, EOFError)
# Preparation processes when `data.prepare_workers` is -1: each holds one decoded scan (about
# 1 GB for a 512 x 512 x 300 one), so a Colab runtime's 12 GB takes four comfortably.
MAX_AUTO_PREPARE_WORKERS = 4


@dataclass
class PreparedCase:
    """One training case on the network grid: HU (X, Y, Z) int16 and training labels (X, Y, Z)
    uint8 (any hemorrhage = 1, or the five subtype codes), memory-mapped from the cache;
    `foreground` holds one (n, 3) array of voxel positions per class present (None: computed
    from `label` by whoever needs it); `cavity` the cranial cavity (X, Y, Z) bool (None: no
    skull was found, or not computed)."""

    case_id: str
    hu: np.ndarray
    label: np.ndarray | None
    foreground: list[np.ndarray] | None = None
    cavity: np.ndarray | None = None

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(HU, labels) read whole into this process's memory (one validation volume at a
        time), not through the mapping, whose pages would stay counted as resident."""
        return _read_whole(self.hu), _read_whole(self.label)


def _read_whole(array: np.ndarray) -> np.ndarray:
    if isinstance(array, np.memmap) and array.filename:
        return np.load(array.filename)
    return np.asarray(array)


def foreground_points(label: np.ndarray) -> list[np.ndarray]:
    """One (n, 3) int32 array of voxel positions per class present in `label` (at most
    `MAX_FOREGROUND_POINTS` each, evenly spread over the class's voxels)."""
    positions = np.stack(np.nonzero(label), axis=1).astype(np.int32)
    values = label[tuple(positions.T)]
    points = []
    for code in np.unique(values):
        of_class = positions[values == code]
        if len(of_class) > MAX_FOREGROUND_POINTS:
            keep = np.linspace(0, len(of_class) - 1, MAX_FOREGROUND_POINTS).astype(int)
            of_class = of_class[keep]
        points.append(of_class)
    return points


def cache_root(data_cfg: DataConfig) -> Path:
    """`data.cache_dir`, else `$ICHSEG_CACHE`, else `~/.cache/ichseg`."""
    chosen = data_cfg.cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ichseg"
    return Path(chosen).expanduser()


def prepare_workers(data_cfg: DataConfig) -> int:
    """Processes preparing uncached scans: `data.prepare_workers`, or for -1 one per CPU up to
    `MAX_AUTO_PREPARE_WORKERS`."""
    if data_cfg.prepare_workers >= 0:
        return data_cfg.prepare_workers
    return min(MAX_AUTO_PREPARE_WORKERS, usable_cpus())


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
            "label_mapping": None if mapping is None else dataclasses.asdict(mapping),
        }
        text = json.dumps(fingerprint, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, case: Case) -> Path:
        """The entry's folder."""
        return self.root / self.key(case)

    def load(self, case: Case) -> tuple[np.ndarray, np.ndarray | None]:
        """(window channels (C, X, Y, Z) float32, training labels (X, Y, Z) uint8 or None)."""
        hu, label, _ = self.load_hu(case)
        return window_channels(hu, self.data_cfg.windows), label

    def load_hu(self, case: Case) -> tuple[np.ndarray, np.ndarray | None,
                                          list[np.ndarray] | None]:
        """(int16 HU on the network grid, training labels or None, foreground points or None),
        memory-mapped from the cache; prepared and stored first on a miss."""
        stored = self.load_case(case)
        return stored.hu, stored.label, stored.foreground

    def load_case(self, case: Case) -> PreparedCase:
        """The case on the network grid (HU, labels, foreground points, cavity),
        memory-mapped from the cache; prepared and stored first on a miss."""
        entry = self.path(case)
        stored = _open_entry(entry, case.case_id)
        if stored is None:
            self._prepare(case, entry)
            stored = _open_entry(entry, case.case_id)
            if stored is None:
                raise UsageError(f"cache entry {entry} cannot be read back; set data.cache_dir "
                                 f"or ${CACHE_ENV} to another folder")
        return stored

    def prepare(self, case: Case) -> None:
        """Store `case`'s entry unless a readable one exists (run in a preparation process)."""
        entry = self.path(case)
        if _open_entry(entry) is None:
            self._prepare(case, entry)

    def _prepare(self, case: Case, entry: Path) -> None:
        # The same checks as `ichseg inspect`: readable files, label on the image's grid.
        check = check_case(case, self.label_mapping or LABEL_MAPPINGS["generic"],
                           self.data_cfg.max_voxels)
        if check.problems:
            raise UsageError(check.problems[0])
        for message in check.warnings:
            warnings.warn(message, UserWarning, stacklevel=3)
        hu, labels, info = prepare_hu(check.image, check.label, self.data_cfg,
                                      self.label_mapping)
        hu = np.clip(np.rint(hu), _INT16.min, _INT16.max).astype(np.int16)
        # Found on the native scan, where the skull's thin parts are sharpest.
        found = find_cavity(check.image.array, check.image.affine)
        cavity = None
        if found.mask is None:
            warnings.warn(f"cranial cavity: {case.image}: {found.reason}; training samples "
                          f"this case without it", UserWarning, stacklevel=3)
        else:
            cavity = labels_to_network(found.mask.view(np.uint8), info) > 0
        self._store(entry, hu, labels, cavity)

    def _store(self, entry: Path, hu: np.ndarray, label: np.ndarray | None,
               cavity: np.ndarray | None = None) -> None:
        arrays = {"hu": hu}
        if cavity is not None:
            arrays["cavity"] = cavity
        if label is not None:
            points = foreground_points(label)
            codes = [np.full((len(p), 1), label[tuple(p[0])], np.int32) for p in points]
            arrays["label"] = label
            arrays["foreground"] = np.concatenate(
                [np.hstack([c, p]) for c, p in zip(codes, points, strict=True)]
                or [np.zeros((0, 4), np.int32)])
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # A folder of files, so not `fileio.atomic_open` (one file): the folder is filled
            # under a temporary name and renamed whole. Not fsynced: a file truncated by a power
            # cut fails to map, and the entry is decoded again.
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{entry.name[:16]}.",
                                        suffix=".tmp"))
            try:
                for name, array in arrays.items():
                    np.save(tmp / f"{name}.npy", array)
                _replace_folder(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise UsageError(f"cache folder {self.root} is not writable ({exc.strerror}); set "
                             f"data.cache_dir or ${CACHE_ENV} to another folder") from None


def _open_entry(entry: Path, case_id: str = "") -> PreparedCase | None:
    """The entry's arrays, memory-mapped; None when it is missing or broken."""
    try:
        hu = np.load(entry / "hu.npy", mmap_mode="r")
        cavity = None
        if (entry / "cavity.npy").exists():
            cavity = np.load(entry / "cavity.npy", mmap_mode="r")
            if cavity.shape != hu.shape:
                return None
        if not (entry / "label.npy").exists():
            return PreparedCase(case_id, hu, None, None, cavity)
        label = np.load(entry / "label.npy", mmap_mode="r")
        table = np.load(entry / "foreground.npy")
    except _BROKEN_ENTRY:
        return None
    if label.shape != hu.shape or table.ndim != 2 or table.shape[1] != 4:
        return None
    points = [table[table[:, 0] == code, 1:] for code in np.unique(table[:, 0])]
    return PreparedCase(case_id, hu, label, points, cavity)


def _replace_folder(tmp: Path, entry: Path) -> None:
    """Rename the finished folder `tmp` to `entry`. A broken entry there is moved aside first; a
    readable one means another writer finished first, and `tmp` is left for the caller to drop."""
    if entry.exists() and _open_entry(entry) is None:
        broken = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name[:16]}.",
                                       suffix=".broken.tmp"))
        try:
            os.replace(entry, broken / "entry")
        except FileNotFoundError:
            pass  # another writer moved it first
        shutil.rmtree(broken, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if _open_entry(entry) is None:
            raise


def load_cases(data_cfg: DataConfig, cases: Sequence[Case], progress: bool = True,
               label_mapping: LabelMapping | None = None) -> list[PreparedCase]:
    """Every case on the network grid, memory-mapped: decoded from disk at most once per dataset.

    Uncached cases are prepared first, in `prepare_workers(data_cfg)` processes when more than
    one is missing, with a progress bar.
    """
    cache = PreprocessedCache(data_cfg, label_mapping=label_mapping)
    for case in cases:
        if case.label is None:
            raise UsageError(f"image {case.image} has no label file; training needs one per case")
    missing = [case for case in cases if _open_entry(cache.path(case)) is None]
    workers = min(prepare_workers(data_cfg), len(missing))
    bar = tqdm(total=len(missing), desc="preparing cases", unit="case",
               disable=not progress or not missing)
    with bar:
        run_jobs(cache.prepare, [(case,) for case in missing], workers, bar)
    return [cache.load_case(case) for case in cases]
