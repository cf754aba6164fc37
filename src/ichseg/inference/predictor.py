"""A trained network ready for inference: `load_predictor` reads a run folder's best or last
checkpoint (or a checkpoint file) with the config it was trained with. Its own file so that
`predict` and `ensemble` both build on it without importing each other."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ichseg.config import Config, config_from_dict, read_run_config
from ichseg.data.layouts import CODES
from ichseg.device import pick_device
from ichseg.errors import UsageError

log = logging.getLogger("ichseg.predict")


@dataclass
class Predictor:
    """A network ready for inference, with the config it was trained with."""

    model: nn.Module
    cfg: Config
    device: torch.device
    source: Path  # the checkpoint file the weights came from

    @property
    def class_names(self) -> dict[int, str]:
        """Label code -> name of the classes this model predicts (background excluded)."""
        if self.cfg.data.subtypes:
            return {code: name for code, name in CODES.items() if code > 0}
        return {1: "hemorrhage"}

    @property
    def members(self) -> list[Predictor]:
        """The models that vote: this one (an `ensemble.Ensemble` has several)."""
        return [self]


def _checkpoint_file(run_or_checkpoint: Path, which: str | None,
                     ) -> tuple[dict[str, Any], Path]:
    """(checkpoint state, its path) for a checkpoint file, or a run folder's best or last."""
    from ichseg.training.checkpoint import BEST, CheckpointManager, load_checkpoint_file

    if run_or_checkpoint.is_file():
        return load_checkpoint_file(run_or_checkpoint), run_or_checkpoint
    if not run_or_checkpoint.is_dir():
        raise UsageError(f"{run_or_checkpoint} is neither a run folder nor a checkpoint file")
    if which is None:
        which = _run_inference_setting(run_or_checkpoint).checkpoint
    if which not in ("best", "last"):
        raise UsageError(f"checkpoint {which!r} must be best or last")
    folder = run_or_checkpoint / "checkpoints"
    if which == "best" and (folder / BEST).exists():
        return load_checkpoint_file(folder / BEST), folder / BEST
    # `last` (or a run with no validated epoch yet): the newest generation that verifies.
    loaded = CheckpointManager(folder).load_latest() if folder.is_dir() else None
    if loaded is None:
        raise UsageError(f"run folder {run_or_checkpoint} has no checkpoint to predict with")
    if which == "best":
        log.warning("run %s has no best.pt yet: predicting with its newest checkpoint %s",
                    run_or_checkpoint, loaded.path.name)
    return loaded.state, loaded.path


def _run_inference_setting(run_dir: Path) -> Any:
    """The inference settings in a run's config.yaml (the defaults when it has none)."""
    from ichseg.config import InferenceConfig

    config = run_dir / "config.yaml"
    return read_run_config(config).inference if config.is_file() else InferenceConfig()


def _config_of(state: dict[str, Any], source: Path, run_or_checkpoint: Path) -> Config:
    """The training config: stored in the checkpoint, or (legacy) the run's config.yaml."""
    if isinstance(state.get("config"), dict):
        return config_from_dict(state["config"], f"the config stored in {source}")
    for run_dir in (run_or_checkpoint, source.parent.parent):
        if (run_dir / "config.yaml").is_file():
            return read_run_config(run_dir / "config.yaml")
    raise UsageError(f"checkpoint {source} holds no config and no run folder's config.yaml is "
                     f"beside it; predict with --run RUN instead")


def load_predictor(run_or_checkpoint: str | Path, checkpoint: str | None = None,
                   device: str = "auto") -> Predictor:
    """Build the network of a run folder (its best or last model: `checkpoint`, by default the
    run's inference.checkpoint) or of a checkpoint file."""
    from ichseg.models import build_model
    from ichseg.training.checkpoint import model_state_from

    run_or_checkpoint = Path(run_or_checkpoint)
    state, source = _checkpoint_file(run_or_checkpoint, checkpoint)
    cfg = _config_of(state, source, run_or_checkpoint)
    model = build_model(cfg)
    try:
        model.load_state_dict(model_state_from(state, source))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"checkpoint {source} does not fit the network of its config: "
                         f"{first}") from None
    target = pick_device(device, "device")
    return Predictor(model.to(target).eval(), cfg, target, source)
