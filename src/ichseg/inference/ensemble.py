"""Several models predicting as one: `ichseg predict --run A --run B ...` (or a folder of runs).

An `Ensemble` looks like a `Predictor` to the rest of predict (config, class names, device); its
`members` are the models, and `class_probabilities` averages their class probabilities (each
with its own test-time augmentation) on the network grid, before the one argmax. Members must
see the scan the same way: the same preprocessing settings and the same classes, else the
ensemble is refused naming the first member that differs. Costs scale with the members: each is
loaded once and runs its own sliding window over every scan.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ichseg.config import Config
from ichseg.errors import UsageError
from ichseg.fileio import atomic_write_text
from ichseg.inference.predictor import Predictor, load_predictor

MODELS_JSON = "models.json"
RUN_CONFIG = "config.yaml"
# Settings of `data` that shape training only (which cases, which patches, how they are read):
# members may differ in these. Every other data setting changes what the network is shown.
_TRAINING_ONLY_DATA = frozenset({
    "path", "layout", "patch_size", "foreground_fraction", "validation_fraction", "stratify",
    "augment", "augmentations", "outside_cavity_fraction", "mimic_fraction", "num_workers",
    "cache_dir", "folds", "fold", "group_by", "max_voxels"})


@dataclass
class Ensemble:
    """Models whose class probabilities are averaged; the first one's config preprocesses."""

    members: list[Predictor]

    @property
    def cfg(self) -> Config:
        return self.members[0].cfg

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def class_names(self) -> dict[int, str]:
        return self.members[0].class_names

    @property
    def source(self) -> str:
        return f"an ensemble of {len(self.members)} models"


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / RUN_CONFIG).is_file())


def expand_runs(sources: Sequence[str | Path]) -> list[Path]:
    """The run folders and checkpoint files named: a folder that is no run itself but holds runs
    (`runs/` with `fold0/`, `fold1/`, ...) stands for those runs, in name order."""
    found: list[Path] = []
    for raw in sources:
        path = Path(raw)
        if path.is_dir() and not is_run_folder(path):
            runs = sorted(p for p in path.iterdir() if is_run_folder(p))
            if runs:
                found.extend(runs)
                continue
        found.append(path)
    seen = set()
    for path in found:
        if path.resolve() in seen:
            raise UsageError(f"{path} is named twice: give each run or checkpoint once")
        seen.add(path.resolve())
    return found


def _preprocessing(cfg: Config) -> dict[str, Any]:
    data = {f"data.{k}": v for k, v in dataclasses.asdict(cfg.data).items()
            if k not in _TRAINING_ONLY_DATA}
    return {**data, "classes": cfg.num_classes}


def load_models(sources: str | Path | Sequence[str | Path], checkpoint: str | None = None,
                device: str = "auto") -> Predictor | Ensemble:
    """One Predictor for one run or checkpoint; an Ensemble for several (or a folder of runs)."""
    paths = expand_runs([sources] if isinstance(sources, (str, Path)) else list(sources))
    if not paths:
        raise UsageError("no run folder or checkpoint was given to predict with")
    members = [load_predictor(path, checkpoint, device) for path in paths]
    if len(members) == 1:
        return members[0]
    first = _preprocessing(members[0].cfg)
    for path, member in zip(paths[1:], members[1:], strict=True):
        theirs = _preprocessing(member.cfg)
        differing = [k for k in first if first[k] != theirs.get(k)]
        if differing:
            detail = "; ".join(f"{k}: {first[k]!r} vs {theirs.get(k)!r}" for k in differing)
            raise UsageError(f"{path} cannot join an ensemble with {paths[0]}: its model sees "
                             f"scans differently ({detail})")
    return Ensemble(members)


def describe_models(predictor: Predictor | Ensemble, tta: bool) -> dict[str, Any]:
    """What `models.json` says: each model that voted (checkpoint, its SHA-256, run, fold)."""
    from ichseg.training.checkpoint import sha256_file

    members = predictor.members
    rows = []
    for member in members:
        run = member.source.parent.parent
        fold = member.cfg.data.fold
        rows.append({"checkpoint": str(member.source), "sha256": sha256_file(member.source),
                     "run": str(run) if is_run_folder(run) else None,
                     "fold": fold if fold >= 0 else None})
    return {"models": rows, "tta": tta,
            "combined": "mean of the models' class probabilities, then argmax"
            if len(members) > 1 else "one model"}


def write_models_json(out_dir: Path, predictor: Predictor | Ensemble, tta: bool) -> Path:
    """`OUT/models.json`, written atomically."""
    return atomic_write_text(out_dir / MODELS_JSON,
                             json.dumps(describe_models(predictor, tta), indent=1) + "\n")
